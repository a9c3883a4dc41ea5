use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::leader::LeaderTask;
use catga_core::store::{Lease, LockStore, MemoryLockStore};
use catga_core::{Catga, Error, Result};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

/// Waits until `check` holds, failing after 20 s.
async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(20), check).await;
}

/// A lock store over a lock that other peers may share, from which this
/// peer can be cut off (acquisitions and renewals fail, as over a dead link)
/// or whose renewals can be made to hang, like a store that stopped
/// answering.
pub(crate) struct Flaky {
    inner: Arc<MemoryLockStore>,
    pub(crate) cut_off: AtomicBool,
    pub(crate) hang: AtomicBool,
    /// Milliseconds each acquisition's and renewal's answer is late (the
    /// store applies it at once, as a slow link does).
    pub(crate) late_ms: AtomicU64,
    /// Releases never answer.
    pub(crate) hang_release: AtomicBool,
    /// Fence lookups made (a receiving peer checking a message's fence).
    pub(crate) lookups: AtomicUsize,
}

impl Flaky {
    /// Over a lock of its own.
    pub(crate) fn new() -> Arc<Flaky> {
        Flaky::over(&Arc::new(MemoryLockStore::new()))
    }

    /// Over `lock`, shared with whoever else uses it.
    pub(crate) fn over(lock: &Arc<MemoryLockStore>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: lock.clone(),
            cut_off: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            late_ms: AtomicU64::new(0),
            hang_release: AtomicBool::new(false),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl LockStore for Flaky {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        if self.cut_off.load(Ordering::SeqCst) {
            return Box::pin(async { Err(Error::store("cut off")) });
        }
        let late = Duration::from_millis(self.late_ms.load(Ordering::SeqCst));
        Box::pin(async move {
            let acquired = self.inner.try_acquire(name, ttl).await;
            tokio::time::sleep(late).await;
            acquired
        })
    }
    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        if self.hang.load(Ordering::SeqCst) {
            Box::pin(std::future::pending())
        } else if self.cut_off.load(Ordering::SeqCst) {
            Box::pin(async { Err(Error::store("cut off")) })
        } else {
            let late = Duration::from_millis(self.late_ms.load(Ordering::SeqCst));
            Box::pin(async move {
                let renewed = self.inner.renew(name, token, ttl).await;
                tokio::time::sleep(late).await;
                renewed
            })
        }
    }
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        if self.hang_release.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.inner.release(name, token)
    }
    fn current_fence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.current_fence(name)
    }
}

/// Counts a running task; uncounts it when dropped (returned or aborted).
struct Running(Arc<AtomicUsize>);
impl Running {
    fn start(count: Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running(count)
    }
}
impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Peer {
    mediator: catga_core::Peer,
    running: Arc<AtomicUsize>,
    fences: Arc<std::sync::Mutex<Vec<u64>>>,
}

async fn peer(store: Arc<dyn LockStore>, ttl: Duration) -> Peer {
    let running = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, f) = (running.clone(), fences.clone());
    let task = LeaderTask::new("test.scheduler", move |ctx| {
        // Noted when the task is made, before it could be stopped.
        f.lock().unwrap().push(ctx.fence());
        let r = r.clone();
        async move {
            // Counted while the task runs, whether it returns or is stopped.
            let _running = Running::start(r);
            ctx.cancelled().await;
            Ok(())
        }
    })
    .ttl(ttl);
    let mediator = Catga::builder()
        .lock_store(store)
        .leader(task)
        .start()
        .await
        .unwrap();
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
    let flaky = Flaky::new();
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

/// Case 5 of the effectively-once issue: a renewal that hangs (the store is
/// slow) must not keep the deposed leader running; the local clock ends its
/// term before the lease, so the old and the new leader never run together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_renewal_ends_the_term_by_the_local_clock_before_the_lease() {
    let lock = Arc::new(MemoryLockStore::new());
    let (flaky, working) = (Flaky::over(&lock), Flaky::over(&lock));
    let ttl = Duration::from_millis(1200);
    let first = peer(flaky.clone(), ttl).await;
    eventually("first leader", || first.running.load(Ordering::SeqCst) == 1).await;
    // A second peer competes all along, over a store that keeps answering.
    let second = peer(working, ttl).await;
    flaky.hang.store(true, Ordering::SeqCst);
    let hung = Instant::now();
    // Never two at once, until the second leads.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stopped = None;
    loop {
        let (a, b) = (
            first.running.load(Ordering::SeqCst),
            second.running.load(Ordering::SeqCst),
        );
        assert!(a + b <= 1, "two leaders at once");
        if a == 0 && stopped.is_none() {
            stopped = Some(hung.elapsed());
        }
        if b == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The last confirmed renewal was at most ttl/3 before the hang: the term
    // ended before the lease could (within one ttl of the hang).
    let stopped = stopped.expect("the first leader stopped");
    assert!(stopped < ttl, "stopped {stopped:?} after the hang");
    flaky.hang.store(false, Ordering::SeqCst);
    first.mediator.shutdown().await.unwrap();
    second.mediator.shutdown().await.unwrap();
}

/// A task that ignores its cancellation is stopped anyway when its term ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ignoring_cancellation_is_stopped_when_its_lease_is_lost() {
    let flaky = Flaky::new();
    let running = Arc::new(AtomicUsize::new(0));
    let r = running.clone();
    let stubborn = LeaderTask::new("test.stubborn", move |_ctx| {
        let r = r.clone();
        async move {
            let _running = Running::start(r);
            std::future::pending::<()>().await;
            Ok(())
        }
    })
    .ttl(Duration::from_millis(300));
    let m = Catga::builder()
        .lock_store(flaky.clone())
        .leader(stubborn)
        .start()
        .await
        .unwrap();
    eventually("leading", || running.load(Ordering::SeqCst) == 1).await;
    flaky.cut_off.store(true, Ordering::SeqCst);
    eventually("stopped", || running.load(Ordering::SeqCst) == 0).await;
    m.shutdown().await.unwrap();
}

/// What a leader sends carries its term's fence; a peer refuses it once a newer
/// term has begun, before any handler runs.
#[tokio::test]
async fn a_message_from_an_earlier_term_is_refused_before_its_handler_runs() {
    use catga_core::{Context, ErrorKind, Fence, Metadata};

    let store = Arc::new(MemoryLockStore::new());
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = runs.clone();
    let m = Catga::builder()
        .lock_store(store.clone())
        .request_fn(move |_: crate::messages::Add, ctx: Context| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(ctx.fence().map(|f| f.token));
                Ok(0)
            }
        })
        .build()
        .unwrap();
    let old = store
        .try_acquire("billing", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release("billing", &old.token).await.unwrap());
    let new = store
        .try_acquire("billing", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(new.fence > old.fence);
    let fenced = |token| {
        Metadata::new().with_fence(&Fence {
            name: "billing".into(),
            token,
        })
    };
    let add = || crate::messages::Add { a: 1, b: 1 };
    let refused = m.send_with(add(), fenced(old.fence)).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    assert_eq!(refused.code(), Some("catga.stale_fence"));
    m.send_with(add(), fenced(new.fence)).await.unwrap();
    assert_eq!(
        *runs.lock().unwrap(),
        [Some(new.fence)],
        "only the current term ran"
    );
    // A malformed fence is an error, not a message without a fence.
    let bad = Metadata::new().with_header(catga_core::FENCE_HEADER, "not-a-fence");
    assert_eq!(
        m.send_with(add(), bad).await.unwrap_err().kind(),
        ErrorKind::Codec
    );
}

/// Commands a leader sends to handlers on its own peer need no fence lookup
/// while its term holds (nothing newer can exist); once the term is over, a
/// message stamped with its fence is looked up again, and refused when a
/// newer term has begun.
#[tokio::test]
async fn a_term_held_here_needs_no_fence_lookup_and_an_ended_one_does() {
    use catga_core::{Context, ErrorKind, Fence, Metadata};

    let store = Flaky::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let term = Arc::new(std::sync::Mutex::new(None));
    let (s, t) = (seen.clone(), term.clone());
    let task = LeaderTask::new("local.term", move |ctx| {
        let t = t.clone();
        async move {
            for _ in 0..10 {
                ctx.send(crate::messages::Add { a: 1, b: 1 }).await?;
            }
            *t.lock().unwrap() = Some(ctx.fence());
            ctx.cancelled().await;
            Ok(())
        }
    })
    .ttl(Duration::from_secs(5));
    let peer = Catga::builder()
        .lock_store(store.clone())
        .request_fn(move |_: crate::messages::Add, ctx: Context| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(ctx.fence().map(|f| f.token));
                Ok(2)
            }
        })
        .leader(task)
        .start()
        .await
        .unwrap();
    eventually("the leader sent its commands", || {
        term.lock().unwrap().is_some()
    })
    .await;
    let fence = term.lock().unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Some(fence); 10]);
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        0,
        "a term held here is current without asking the store"
    );
    let mediator = peer.mediator().clone();
    peer.shutdown().await.unwrap();
    let newer = store
        .inner
        .try_acquire("local.term", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(newer.fence > fence);
    let stamped = Metadata::new().with_fence(&Fence {
        name: "local.term".into(),
        token: fence,
    });
    let refused = mediator
        .send_with(crate::messages::Add { a: 1, b: 1 }, stamped)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    assert_eq!(refused.code(), Some("catga.stale_fence"));
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        1,
        "the ended term was looked up"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        10,
        "the stale command did not run"
    );
}

/// Shutdown is bounded whatever the background work does: a leader task that
/// ignores its cancellation and a lock store whose release hangs (a Redis that
/// went away) leave `shutdown` with an error naming what was left, at the
/// grace, not after the lease or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_at_its_grace_and_names_what_was_left() {
    let store = Flaky::new();
    let running = Arc::new(AtomicBool::new(false));
    let r = running.clone();
    let m = Catga::builder()
        .lock_store(store.clone())
        .shutdown_grace(Duration::from_millis(300))
        .leader(
            LeaderTask::new("stubborn", move |_ctx| {
                let r = r.clone();
                async move {
                    r.store(true, Ordering::SeqCst);
                    // Ignores its cancellation.
                    std::future::pending::<()>().await;
                    Ok(())
                }
            })
            .ttl(Duration::from_secs(30)),
        )
        .start()
        .await
        .unwrap();
    eventually("the task leads", || running.load(Ordering::SeqCst)).await;
    store.hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let e = m.shutdown().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up at its grace, not after the 30 s lease: {:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("background tasks"), "{e}");
}

/// A peer with a transport but no lock store checks fences against its own,
/// empty store, where every fence passes: the first fenced message it gets
/// says so, once, loudly (the configuration defeats the deposed-leader guard).
#[tokio::test]
async fn a_peer_without_the_leaders_lock_store_says_its_fences_mean_nothing() {
    use catga_core::transport::memory::MemoryBus;
    use catga_core::{Fence, Metadata};

    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let bus = MemoryBus::new();
    let peer = Catga::builder()
        .transport(bus.transport())
        .request_fn(|_: crate::messages::Add, _| async { Ok(0) })
        .start()
        .await
        .unwrap();
    let m = peer.mediator();
    let fenced = || {
        Metadata::new().with_fence(&Fence {
            name: "billing".into(),
            token: 7,
        })
    };
    let add = || crate::messages::Add { a: 1, b: 1 };
    m.send_with(add(), fenced()).await.unwrap();
    m.send_with(add(), fenced()).await.unwrap();
    let said = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        said.matches("has no lock store").count(),
        1,
        "said once: {said}"
    );
    assert!(said.contains("billing"), "{said}");
    peer.shutdown().await.unwrap();
}

/// A lock store whose answers come late but every one of them yes: renewals
/// are scheduled from when each was asked, like the lease, so a leader whose
/// renewals take 0.38 of the lease keeps its term (scheduled from the answer,
/// the next renewal came after the term's end and the leader was deposed
/// every term, though nobody else held the lock).
#[tokio::test(start_paused = true)]
async fn slow_renewals_that_succeed_keep_the_term() {
    let flaky = Flaky::new();
    let ttl = Duration::from_millis(600);
    let leader = peer(flaky.clone(), ttl).await;
    eventually("a leader", || leader.running.load(Ordering::SeqCst) == 1).await;
    flaky.late_ms.store(230, Ordering::SeqCst);
    // Ten leases.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(leader.running.load(Ordering::SeqCst), 1, "deposed");
    }
    assert_eq!(leader.fences.lock().unwrap().len(), 1, "elected once");
    leader.mediator.shutdown().await.unwrap();
}

/// An election whose answer came after the term it granted had ended (by
/// this peer's clock) does not start the task: another peer may lead by
/// then. Once answers are timely again, the peer leads.
#[tokio::test(start_paused = true)]
async fn an_election_answered_after_its_term_does_not_start_the_task() {
    let flaky = Flaky::new();
    flaky.late_ms.store(700, Ordering::SeqCst);
    let late = peer(flaky.clone(), Duration::from_millis(600)).await;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(late.mediator.leading().is_empty());
    }
    assert!(late.fences.lock().unwrap().is_empty(), "the task started");
    flaky.late_ms.store(0, Ordering::SeqCst);
    eventually("a timely election", || {
        late.fences.lock().unwrap().len() == 1
    })
    .await;
    late.mediator.shutdown().await.unwrap();
}

/// A deposed leader stops reporting itself as leading at once, not when its
/// release of the lock answers (which may take the store's whole timeout).
#[tokio::test(start_paused = true)]
async fn a_deposed_leader_stops_reporting_it_leads_before_its_release_answers() {
    let flaky = Flaky::new();
    let leader = peer(flaky.clone(), Duration::from_millis(600)).await;
    eventually("a leader", || leader.running.load(Ordering::SeqCst) == 1).await;
    assert_eq!(leader.mediator.leading(), ["test.scheduler"]);
    flaky.hang_release.store(true, Ordering::SeqCst);
    flaky.cut_off.store(true, Ordering::SeqCst);
    eventually("deposed", || leader.running.load(Ordering::SeqCst) == 0).await;
    eventually("no longer reported as leading", || {
        leader.mediator.leading().is_empty()
    })
    .await;
    // The peer's own shutdown waits for the hung release; it is left to drop.
}
