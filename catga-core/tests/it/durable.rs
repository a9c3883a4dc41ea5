//! Durable commands in one process and over the in-memory bus: sent now,
//! handled when a handler can, retried while they fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::store::MemoryIdempotencyStore;
use catga_core::transport::memory::MemoryBus;
use catga_core::{Catga, Context, Error, ErrorKind, Message, Request};
use serde::{Deserialize, Serialize};

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(20), check).await;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ship {
    order: u64,
}
impl Message for Ship {
    const NAME: &'static str = "durable.Ship";
}
impl Request for Ship {
    type Response = ();
    const DURABLE: bool = true;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ask;
impl Message for Ask {
    const NAME: &'static str = "durable.Ask";
}
impl Request for Ask {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pay {
    order: u64,
}
impl Message for Pay {
    const NAME: &'static str = "durable.Pay";
    const IDEMPOTENT: bool = true;
}
impl Request for Pay {
    type Response = ();
}

/// Counts attempts; the first `fail` of them fail with a retryable error.
fn shipping(attempts: Arc<AtomicUsize>, fail: usize) -> catga_core::CatgaBuilder {
    Catga::builder().request_fn(move |_: Ship, _| {
        let attempts = attempts.clone();
        async move {
            if attempts.fetch_add(1, Ordering::SeqCst) < fail {
                return Err(Error::store("the warehouse is busy"));
            }
            Ok(())
        }
    })
}

#[tokio::test]
async fn a_durable_command_returns_at_once_and_is_retried_until_handled() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let m = shipping(attempts.clone(), 2).build().unwrap();
    m.send_durable(Ship { order: 1 }).await.unwrap();
    eventually("handled after two failures", || {
        attempts.load(Ordering::SeqCst) == 3
    })
    .await;
    // Not declared durable: refused, naming the type.
    let e = m.send_durable(Ask).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("durable.Ask"), "{e}");
}

/// Over the bus, a command sent while no peer handles it is kept and
/// handled once one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_waits_for_its_service_over_the_bus() {
    let bus = MemoryBus::new();
    let client = Catga::builder()
        .service("orders")
        .transport(bus.transport())
        .build()
        .unwrap();
    client.send_durable(Ship { order: 2 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = shipping(attempts.clone(), 0)
        .service("shipping")
        .transport(bus.transport())
        .start()
        .await
        .unwrap();
    eventually("handled by the late peer", || {
        attempts.load(Ordering::SeqCst) == 1
    })
    .await;
    server.shutdown().await.unwrap();
}

/// From a handler under idempotency with an outbox, a durable command is
/// held with the handler's result and sent once it is stored; a duplicate of
/// the handler's message sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_from_a_handler_goes_through_the_outbox() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let peer = shipping(attempts.clone(), 0)
        .idempotency(MemoryIdempotencyStore::new())
        .request_fn(|p: Pay, ctx: Context| async move {
            ctx.send_durable(Ship { order: p.order }).await
        })
        .start()
        .await
        .unwrap();
    let meta = catga_core::Metadata::new().with_message_id(catga_core::new_id());
    peer.send_with(Pay { order: 3 }, meta.clone())
        .await
        .unwrap();
    peer.send_with(Pay { order: 3 }, meta).await.unwrap();
    eventually("the command is relayed and handled", || {
        attempts.load(Ordering::SeqCst) >= 1
    })
    .await;
    peer.shutdown().await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "sent once");
}
