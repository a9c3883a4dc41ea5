//! Durable commands over JetStream: stored while their service is down,
//! handled once when it returns, dead-lettered when they cannot be handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::{Catga, Error, Message, Request};
use catga_nats::JetStreamOptions;
use catga_test_support::NatsServer;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::common::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ship {
    order: u64,
    poison: bool,
}
impl Message for Ship {
    const NAME: &'static str = "test.Ship";
}
impl Request for Ship {
    type Response = ();
    const DURABLE: bool = true;
}

async fn shipping(urls: &[String], handled: Arc<AtomicUsize>) -> catga_core::Peer {
    let nats = catga_nats::NatsTransport::connect(options(urls).jetstream(JetStreamOptions {
        max_deliveries: 2,
        backoff: Duration::from_millis(20),
        ..JetStreamOptions::default()
    }))
    .await
    .unwrap();
    Catga::builder()
        .service("shipping")
        .transport(nats)
        .request_fn(move |s: Ship, _| {
            let handled = handled.clone();
            async move {
                if s.poison {
                    return Err(Error::validation("this parcel cannot be shipped"));
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_sent_while_its_service_is_down_is_handled_once_when_it_returns() {
    // On the 3-node cluster: the commands stream has three replicas.
    let cluster = catga_test_support::NatsCluster::start();
    let urls = cluster.urls();
    let handled = Arc::new(AtomicUsize::new(0));
    // The service ran once (its queue exists), then stopped.
    shipping(&urls, handled.clone())
        .await
        .shutdown()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("orders")
        .transport(connect(&urls[1..]).await)
        .build()
        .unwrap();
    for order in 0..5 {
        client
            .send_durable(Ship {
                order,
                poison: false,
            })
            .await
            .unwrap();
    }
    assert_eq!(handled.load(Ordering::SeqCst), 0, "nobody serves it yet");
    // Two copies come back; the work queue gives each command to one of them.
    let a = shipping(&urls[..1], handled.clone()).await;
    let b = shipping(&urls[2..], handled.clone()).await;
    eventually("the 5 stored commands", || {
        handled.load(Ordering::SeqCst) >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 5, "each once");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_command_ends_in_dead_letters_naming_where_it_came_from() {
    let server = NatsServer::start();
    let handled = Arc::new(AtomicUsize::new(0));
    let peer = shipping(&[server.url()], handled.clone()).await;
    peer.send_durable(Ship {
        order: 9,
        poison: true,
    })
    .await
    .unwrap();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut dlq = js
        .get_stream("CATGA_DLQ")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let entry = tokio::time::timeout(Duration::from_secs(20), dlq.next())
        .await
        .expect("a dead letter")
        .unwrap()
        .unwrap();
    assert_eq!(entry.subject.as_str(), "catga.dlq.test.Ship");
    let headers = entry.headers.clone().unwrap();
    assert_eq!(
        headers.get("Catga-Subject").unwrap().as_str(),
        "catga.cmd.test.Ship"
    );
    assert_eq!(
        headers.get("Catga-Error-Kind").unwrap().as_str(),
        "validation"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    peer.shutdown().await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pack {
    slow_ms: u64,
}
impl Message for Pack {
    const NAME: &'static str = "test.Pack";
}
impl Request for Pack {
    type Response = ();
    const DURABLE: bool = true;
}

/// A handler that takes three times JetStream's `ack_wait` keeps its
/// message: the peer tells JetStream it is still at it, so the command is
/// neither handed out again while it runs (no second run, even without
/// idempotency) nor counted towards dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_ack_wait_keeps_its_message_and_runs_once() {
    let server = NatsServer::start();
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (started.clone(), finished.clone());
    let nats =
        catga_nats::NatsTransport::connect(options(&[server.url()]).jetstream(JetStreamOptions {
            ack_wait: Duration::from_secs(2),
            max_deliveries: 2,
            backoff: Duration::from_millis(20),
            ..JetStreamOptions::default()
        }))
        .await
        .unwrap();
    let peer = Catga::builder()
        .service("packing")
        .transport(nats)
        .request_fn(move |p: Pack, _| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(p.slow_ms)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    peer.send_durable(Pack { slow_ms: 6_000 }).await.unwrap();
    eventually("the slow command finished", || {
        finished.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Two more ack waits: a redelivery would have started by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "handed out once");
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let dead = match js.get_stream("CATGA_DLQ").await {
        Ok(mut dlq) => dlq.info().await.unwrap().state.messages,
        Err(_) => 0,
    };
    assert_eq!(dead, 0, "nothing dead-lettered");
    peer.shutdown().await.unwrap();
}

/// A stored command whose key another attempt holds (a claim left behind by a
/// copy that died, or by a store call that applied after its caller gave up)
/// is offered again after `ack_wait`, not spent in a few quick redeliveries
/// and dead-lettered unhandled: it runs, once, when the claim lapses, and with
/// no deadline (a stored command is worth handling whenever it is delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_whose_key_is_held_runs_when_the_claim_lapses_with_no_deadline() {
    use catga_core::store::{IdempotencyStore, MemoryIdempotencyStore};

    let server = NatsServer::start();
    let store = Arc::new(MemoryIdempotencyStore::new());
    let id = catga_core::new_id();
    let handled = Arc::new(AtomicUsize::new(0));
    let nats =
        catga_nats::NatsTransport::connect(options(&[server.url()]).jetstream(JetStreamOptions {
            max_deliveries: 4,
            backoff: Duration::from_millis(20),
            ack_wait: Duration::from_secs(2),
            ..JetStreamOptions::default()
        }))
        .await
        .unwrap();
    let counted = handled.clone();
    let deadlines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = deadlines.clone();
    let peer = Catga::builder()
        .service("shipping")
        .transport(nats)
        .idempotency_with(store.clone(), |i| i.wait(Duration::from_millis(200)))
        .idempotent::<Ship>()
        .request_fn(move |_: Ship, ctx: catga_core::Context| {
            let counted = counted.clone();
            seen.lock().unwrap().push(ctx.deadline());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    // Nobody will complete this claim; it lapses after 3 s. Taken just
    // before the command is sent, so that its first deliveries find it.
    store
        .claim(&format!("test.Ship:{id}"), Duration::from_secs(3))
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    peer.mediator()
        .send_durable_with(
            Ship {
                order: 1,
                poison: false,
            },
            catga_core::Metadata::new().with_message_id(id),
        )
        .await
        .unwrap();
    eventually("the command, once its claim lapsed", || {
        handled.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "handled only once the claim lapsed: {:?}",
        sent.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "once");
    // A stored command has no deadline: it is worth handling whenever it
    // is delivered, however long it takes.
    assert_eq!(*deadlines.lock().unwrap(), [None]);
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let dead = js
        .get_stream("CATGA_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dead, 0, "nothing dead-lettered");
    peer.shutdown().await.unwrap();
}

/// The stream drops a durable command sent again (the same id and bytes),
/// but not another command that reuses its id with other bytes: that one is
/// stored and reaches the handler's side (here a handler without
/// idempotency, which handles it; an idempotent one refuses it visibly),
/// instead of `send_durable` answering Ok for a command nobody will see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_durable_command_is_stored_once_and_one_reusing_its_id_is_not_dropped() {
    let server = NatsServer::start();
    let handled = Arc::new(AtomicUsize::new(0));
    let peer = shipping(&[server.url()], handled.clone()).await;
    let id = catga_core::new_id();
    let meta = || catga_core::Metadata::new().with_message_id(id);
    let first = Ship {
        order: 1,
        poison: false,
    };
    for _ in 0..2 {
        peer.mediator()
            .send_durable_with(first.clone(), meta())
            .await
            .unwrap();
    }
    let other = Ship {
        order: 2,
        poison: false,
    };
    peer.mediator()
        .send_durable_with(other, meta())
        .await
        .unwrap();
    eventually("both commands", || handled.load(Ordering::SeqCst) >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 2, "the re-sent one dropped");
    peer.shutdown().await.unwrap();
}
