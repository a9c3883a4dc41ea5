use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::leader::LeaderTask;
use catga_core::store::{Lease, LockStore, MemoryLockStore};
use catga_core::{Catga, Error, Mediator, Result};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

/// Waits until `check` holds, failing after 20 s.
async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(20), check).await;
}

/// A lock store whose renewals can be made to fail, like a peer cut off from it.
struct Flaky {
    inner: MemoryLockStore,
    cut_off: AtomicBool,
}
impl LockStore for Flaky {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        self.inner.try_acquire(name, ttl)
    }
    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        if self.cut_off.load(Ordering::SeqCst) {
            Box::pin(async { Err(Error::store("cut off")) })
        } else {
            self.inner.renew(name, token, ttl)
        }
    }
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.inner.release(name, token)
    }
}

struct Peer {
    mediator: Mediator,
    running: Arc<AtomicUsize>,
    fences: Arc<std::sync::Mutex<Vec<u64>>>,
}

async fn peer(store: Arc<dyn LockStore>, ttl: Duration) -> Peer {
    let running = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, f) = (running.clone(), fences.clone());
    let task = LeaderTask::new("test.scheduler", move |ctx| {
        let (r, f) = (r.clone(), f.clone());
        async move {
            f.lock().unwrap().push(ctx.fence());
            r.fetch_add(1, Ordering::SeqCst);
            ctx.cancelled().await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .ttl(ttl);
    let mediator = Catga::builder()
        .shared_lock_store(store)
        .leader(task)
        .build()
        .unwrap();
    mediator.start().await.unwrap();
    Peer {
        mediator,
        running,
        fences,
    }
}

fn leaders(peers: &[Peer]) -> usize {
    peers.iter().map(|p| p.running.load(Ordering::SeqCst)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_three_peers_runs_the_task_and_graceful_stop_hands_over() {
    let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(peer(store.clone(), Duration::from_secs(30)).await);
    }
    eventually("a leader", || leaders(&peers) == 1).await;
    // Stays exactly one over several renewal periods of others' retries.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(leaders(&peers), 1);
    }
    let i = peers
        .iter()
        .position(|p| p.running.load(Ordering::SeqCst) == 1)
        .unwrap();
    let old = peers.remove(i);
    let first_fence = old.fences.lock().unwrap()[0];
    let stopped = Instant::now();
    old.mediator.shutdown().await.unwrap();
    assert_eq!(
        old.running.load(Ordering::SeqCst),
        0,
        "shutdown waits for the task"
    );
    // The lease is 30 s: a take-over well before that proves the lock was released.
    eventually("hand-over", || leaders(&peers) == 1).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "hand-over took {:?}",
        stopped.elapsed()
    );
    let new_fence = peers
        .iter()
        .flat_map(|p| p.fences.lock().unwrap().clone())
        .max()
        .unwrap();
    assert!(new_fence > first_fence);
    for p in &peers {
        p.mediator.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_store_loses_its_lease_and_another_takes_over() {
    let flaky = Arc::new(Flaky {
        inner: MemoryLockStore::new(),
        cut_off: AtomicBool::new(false),
    });
    let first = peer(flaky.clone(), Duration::from_millis(300)).await;
    eventually("first leader", || first.running.load(Ordering::SeqCst) == 1).await;
    flaky.cut_off.store(true, Ordering::SeqCst);
    eventually("lease lost and task cancelled", || {
        first.running.load(Ordering::SeqCst) == 0
    })
    .await;
    flaky.cut_off.store(false, Ordering::SeqCst);
    let second = peer(flaky.clone(), Duration::from_millis(300)).await;
    eventually("a new leader", || {
        first.running.load(Ordering::SeqCst) + second.running.load(Ordering::SeqCst) == 1
    })
    .await;
    first.mediator.shutdown().await.unwrap();
    second.mediator.shutdown().await.unwrap();
}

#[test]
fn two_leader_tasks_with_one_name_fail_the_build() {
    let err = Catga::builder()
        .leader_task("x", |_| async { Ok(()) })
        .leader_task("x", |_| async { Ok(()) })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("`x`"), "{err}");
}
