//! A started peer as a guard; what `build()` and `start()` refuse; idempotency
//! declared on the type or the builder instead of wired per type.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::store::{MemoryIdempotencyStore, MemoryLockStore};
use catga_core::transport::memory::MemoryBus;
use catga_core::{Catga, Context, Error, ErrorKind, Event, Message, Metadata, Request};
use serde::{Deserialize, Serialize};

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(20), check).await;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: u64,
}
impl Message for Charge {
    const NAME: &'static str = "peer.Charge";
    const IDEMPOTENT: bool = true;
}
impl Request for Charge {
    type Response = u64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    cents: u64,
}
impl Message for Refund {
    const NAME: &'static str = "peer.Refund";
}
impl Request for Refund {
    type Response = u64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charged {
    cents: u64,
}
impl Message for Charged {
    const NAME: &'static str = "peer.Charged";
}
impl Event for Charged {}

#[tokio::test]
async fn build_refuses_what_must_run_in_the_background() {
    let e = Catga::builder()
        .leader_task("peer.job", |_| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("start().await"), "{e}");
    let bus = MemoryBus::new();
    let e = Catga::builder()
        .transport(bus.transport())
        .request_fn(|r: Refund, _| async move { Ok(r.cents) })
        .build()
        .unwrap_err();
    assert!(e.message().contains("serve over the transport"), "{e}");
    // A client that serves nothing is built.
    Catga::builder().transport(bus.transport()).build().unwrap();
}

#[tokio::test]
async fn start_refuses_in_memory_coordination_over_a_transport() {
    let bus = MemoryBus::new();
    let e = Catga::builder()
        .transport(bus.transport())
        .leader_task("peer.job", |_| async { Ok(()) })
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains(".single_copy()"), "{e}");
    // Said explicitly, or with a lock store given, it starts.
    let one = Catga::builder()
        .transport(bus.transport())
        .leader_task("peer.job", |_| async { Ok(()) })
        .single_copy()
        .start()
        .await
        .unwrap();
    one.shutdown().await.unwrap();
    let shared = Catga::builder()
        .transport(bus.transport())
        .lock_store(MemoryLockStore::new())
        .leader_task("peer.job", |_| async { Ok(()) })
        .start()
        .await
        .unwrap();
    shared.shutdown().await.unwrap();
}

/// Dropping a peer without `shutdown` stops its leader task (the guard owns
/// it); a clone of its mediator still dispatches locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_peer_stops_its_background_tasks() {
    let running = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (r, s) = (running.clone(), stopped.clone());
    let peer = Catga::builder()
        .leader_task("peer.job", move |ctx| {
            let (r, s) = (r.clone(), s.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                ctx.cancelled().await;
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .request_fn(|r: Refund, _| async move { Ok(r.cents) })
        .start()
        .await
        .unwrap();
    eventually("the leader task runs", || {
        running.load(Ordering::SeqCst) == 1
    })
    .await;
    let mediator = peer.mediator().clone();
    drop(peer);
    eventually("the task is cancelled", || {
        stopped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(mediator.send(Refund { cents: 3 }).await.unwrap(), 3);
}

/// One call configures idempotency and its outbox: a type that declares
/// itself idempotent runs once per message id, and the event its handler
/// publishes is relayed once, after the result is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_declared_idempotent_runs_once_and_its_events_are_relayed_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (r, s) = (runs.clone(), seen.clone());
    let peer = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .request_fn(move |c: Charge, ctx: Context| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                ctx.publish(Charged { cents: c.cents }).await?;
                Ok(c.cents)
            }
        })
        .event_fn(move |_: Charged, _| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let id = catga_core::new_id();
    for _ in 0..3 {
        let answer = peer
            .send_with(Charge { cents: 5 }, Metadata::new().with_message_id(id))
            .await
            .unwrap();
        assert_eq!(answer, 5);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one effect for one id");
    eventually("the event is relayed", || seen.load(Ordering::SeqCst) == 1).await;
    peer.shutdown().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1, "relayed once");
}

/// `.idempotent::<M>()` declares a type that does not declare itself; a type
/// declared but without a store, or wrapped twice, is a build error.
#[tokio::test]
async fn idempotency_declared_on_the_builder_and_its_mistakes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let peer = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .idempotent::<Refund>()
        .request_fn(move |c: Refund, _| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(c.cents)
            }
        })
        .start()
        .await
        .unwrap();
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    peer.send_with(Refund { cents: 1 }, meta.clone())
        .await
        .unwrap();
    peer.send_with(Refund { cents: 1 }, meta).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    peer.shutdown().await.unwrap();

    let e = Catga::builder()
        .request_fn(|c: Charge, _| async move { Ok(c.cents) })
        .build()
        .unwrap_err();
    assert!(e.message().contains("peer.Charge"), "{e}");
    assert!(e.message().contains(".idempotency(store)"), "{e}");

    let store = MemoryIdempotencyStore::new();
    let e = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .behavior_for::<Charge, _>(Idempotency::new(store))
        .request_fn(|c: Charge, _| async move { Ok(c.cents) })
        .start()
        .await
        .unwrap_err();
    assert!(e.message().contains("2 idempotency behaviors"), "{e}");
}

/// Counts the dispatches it wraps.
struct Count(Arc<AtomicUsize>);
impl catga_core::behavior::Behavior for Count {
    async fn handle<'a>(
        &'a self,
        env: catga_core::behavior::Envelope<'a>,
        next: impl catga_core::behavior::Next<'a>,
    ) -> catga_core::Result<catga_core::behavior::Reply> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(env).await
    }
}

fn billing(seen: Arc<AtomicUsize>) -> catga_core::CatgaBuilder {
    Catga::builder()
        .behavior(Count(seen))
        .request_fn(|r: Refund, _| async move { Ok(r.cents) })
        .event_fn(|_: Charged, _| async { Ok(()) })
}

/// A service is a function returning its module: merged, its handlers serve,
/// its module-wide behavior wraps its own message types only (not `Charge`),
/// and event handlers of one type from two modules add up.
#[tokio::test]
async fn modules_merge_into_one_service() {
    let billing_seen = Arc::new(AtomicUsize::new(0));
    let audit = Arc::new(AtomicUsize::new(0));
    let a = audit.clone();
    let other = Catga::builder()
        .request_fn(|c: Charge, _| async move { Ok(c.cents * 2) })
        .event_fn(move |_: Charged, _| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
    let m = Catga::builder()
        .service("shop")
        .idempotency(MemoryIdempotencyStore::new())
        .merge(billing(billing_seen.clone()))
        .merge(other)
        .start()
        .await
        .unwrap();
    assert_eq!(m.send(Refund { cents: 4 }).await.unwrap(), 4);
    assert_eq!(m.send(Charge { cents: 4 }).await.unwrap(), 8);
    assert_eq!(
        billing_seen.load(Ordering::SeqCst),
        1,
        "Refund only, not Charge"
    );
    m.publish(Charged { cents: 1 }).await.unwrap();
    // Both modules' handlers ran; billing's behavior wraps its message
    // types, so every handler of `Charged` (audit's too): 1 + 2.
    assert_eq!(audit.load(Ordering::SeqCst), 1);
    assert_eq!(billing_seen.load(Ordering::SeqCst), 3);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn merging_modules_that_clash_is_a_build_error() {
    let seen = Arc::new(AtomicUsize::new(0));
    let e = Catga::builder()
        .merge(billing(seen.clone()))
        .merge(billing(seen.clone()))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateHandler, "{e}");
    let e = Catga::builder()
        .merge(billing(seen).service("billing"))
        .build()
        .unwrap_err();
    assert!(e.message().contains("sets service"), "{e}");
    let bus = MemoryBus::new();
    let e = Catga::builder()
        .transport(bus.transport())
        .merge(Catga::builder().transport(bus.transport()))
        .build()
        .unwrap_err();
    assert!(e.message().contains("a transport"), "{e}");
}

/// The same message id with a different payload is refused, as Stripe and
/// the IETF Idempotency-Key draft do, instead of silently getting the first
/// request's outcome; the same payload gets the stored outcome.
#[tokio::test]
async fn the_same_id_with_another_payload_is_a_conflict() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let peer = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .request_fn(move |c: Charge, _| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(c.cents)
            }
        })
        .start()
        .await
        .unwrap();
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    assert_eq!(
        peer.send_with(Charge { cents: 5 }, meta.clone())
            .await
            .unwrap(),
        5
    );
    let e = peer
        .send_with(Charge { cents: 6 }, meta.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(e.code(), Some("catga.idempotency_key_reused"));
    assert!(!e.is_retryable());
    assert_eq!(peer.send_with(Charge { cents: 5 }, meta).await.unwrap(), 5);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    peer.shutdown().await.unwrap();
}

/// A lock store that cannot be reached.
struct Unreachable;
impl catga_core::store::LockStore for Unreachable {
    fn try_acquire<'a>(
        &'a self,
        _: &'a str,
        _: Duration,
    ) -> futures_util::future::BoxFuture<'a, catga_core::Result<Option<catga_core::store::Lease>>>
    {
        Box::pin(async { Err(Error::store("connection refused")) })
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> futures_util::future::BoxFuture<'a, catga_core::Result<bool>> {
        Box::pin(async { Err(Error::store("connection refused")) })
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, catga_core::Result<bool>> {
        Box::pin(async { Err(Error::store("connection refused")) })
    }
    fn current_fence<'a>(
        &'a self,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, catga_core::Result<u64>> {
        Box::pin(std::future::pending())
    }
}

/// `Peer::health` checks the transport and every store within its timeout,
/// and names what does not answer.
#[tokio::test]
async fn health_names_what_does_not_answer() {
    let fine = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .start()
        .await
        .unwrap();
    let h = fine.health(Duration::from_millis(500)).await;
    assert!(h.is_ready(), "{}", h.problems());
    let names: Vec<_> = h.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, ["transport", "lock_store", "outbox", "saga_store"]);
    fine.shutdown().await.unwrap();

    let stuck = Catga::builder()
        .lock_store(Unreachable)
        .start()
        .await
        .unwrap();
    let h = stuck.health(Duration::from_millis(100)).await;
    assert!(!h.is_ready());
    assert!(
        h.problems().starts_with("lock_store: no answer within"),
        "{}",
        h.problems()
    );
    stuck.shutdown().await.unwrap();
}
