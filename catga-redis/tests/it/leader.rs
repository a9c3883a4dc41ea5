use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::Catga;
use catga_core::leader::LeaderTask;
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::RedisServer;
use tokio::time::Instant;

use crate::common::{Isolated, eventually};

/// Marks a task's term over when dropped: returned, or stopped by its peer.
struct Ended(Arc<AtomicBool>, Arc<AtomicUsize>);
impl Drop for Ended {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// A leader-task peer: the task marks itself running until cancelled.
struct Peer {
    node: Isolated,
    running: Arc<AtomicBool>,
    cancelled: Arc<AtomicUsize>,
}

impl Peer {
    async fn start(url: &str, ttl: Duration) -> Peer {
        let running = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let (r, c, url) = (running.clone(), cancelled.clone(), url.to_owned());
        let node = Isolated::start(move || async move {
            let store = RedisStore::connect(RedisOptions::new(url)).await.unwrap();
            let task = LeaderTask::new("test.scheduler", move |ctx| {
                let (r, c) = (r.clone(), c.clone());
                async move {
                    r.store(true, Ordering::SeqCst);
                    // Marks the end whether the task returns or is stopped.
                    let _term = Ended(r, c);
                    ctx.cancelled().await;
                    Ok(())
                }
            })
            .ttl(ttl);
            Catga::builder().lock_store(store).leader(task)
        })
        .await;
        Peer {
            node,
            running,
            cancelled,
        }
    }

    fn is_leader(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn kill(&mut self) {
        self.node.kill();
        self.running.store(false, Ordering::SeqCst);
    }

    async fn stop(&mut self) {
        self.node.stop().await;
    }
}

fn leaders(peers: &[Peer]) -> usize {
    peers.iter().filter(|p| p.is_leader()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_peers_leads_a_killed_leader_is_replaced_and_a_stopped_one_hands_over() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(2);
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(Peer::start(&server.url(), ttl).await);
    }
    eventually("a leader", || leaders(&peers) == 1).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(leaders(&peers), 1, "exactly one leader at a time");
    }

    // Kill the leader: no release; another peer takes over within lease + 1 s.
    let i = peers.iter().position(Peer::is_leader).unwrap();
    let mut dead = peers.remove(i);
    dead.kill();
    let killed = Instant::now();
    eventually("a new leader after the kill", || leaders(&peers) == 1).await;
    let took = killed.elapsed();
    assert!(
        took <= ttl + Duration::from_secs(1),
        "take-over after a kill took {took:?}"
    );

    // Stop the leader gracefully: it releases, hand-over in under a second.
    let i = peers.iter().position(Peer::is_leader).unwrap();
    let mut stopping = peers.remove(i);
    let stopped = Instant::now();
    stopping.stop().await;
    assert!(!stopping.is_leader());
    assert_eq!(
        stopping.cancelled.load(Ordering::SeqCst),
        1,
        "its task was cancelled"
    );
    eventually("hand-over after a graceful stop", || leaders(&peers) == 1).await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "graceful hand-over took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_is_taken_gets_lease_lost_and_its_task_cancelled() {
    let server = RedisServer::start();
    let peer = Peer::start(&server.url(), Duration::from_millis(600)).await;
    eventually("leader", || peer.is_leader()).await;
    // Someone else owns the key now (as after an expiry during a long pause).
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("{catga:lock:test.scheduler}")
        .arg("another-holder")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    eventually("the task cancelled", || {
        peer.cancelled.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(!peer.is_leader());
}
