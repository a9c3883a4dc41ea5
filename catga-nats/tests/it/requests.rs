use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::{Catga, Error, ErrorKind, Metadata};
use catga_test_support::NatsServer;

use crate::common::*;

type Seen = Arc<Mutex<HashMap<i64, Vec<usize>>>>;

async fn adder(url: &str, index: usize, seen: Seen) -> catga_core::Peer {
    Catga::builder()
        .service("calc")
        .transport(connect(&[url.to_owned()]).await)
        .request_fn(move |a: Add, _| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().entry(a.a).or_default().push(index);
                Ok(a.a + a.b)
            }
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_share_300_requests_each_handled_exactly_once() {
    let server = NatsServer::start();
    let seen: Seen = Arc::default();
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(adder(&server.url(), i, seen.clone()).await);
    }
    let client = Catga::builder()
        .service("gateway")
        .transport(connect(&[server.url()]).await)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.send(Add { a: i, b: 1 }).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), i as i64 + 1);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 300);
    let mut share = [0usize; 3];
    for handlers in seen.values() {
        assert_eq!(handlers.len(), 1, "a request was handled more than once");
        share[handlers[0]] += 1;
    }
    assert!(
        share.iter().all(|&n| n > 0),
        "every peer got a share: {share:?}"
    );
}

#[tokio::test]
async fn handler_error_kind_and_code_cross_the_wire() {
    let server = NatsServer::start();
    let _peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(|f: Fail, _| async move {
            Err::<(), _>(Error::handler(f.code, "refused: out of stock"))
        })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    let err = client
        .send(Fail {
            code: "orders.out_of_stock".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.code(), Some("orders.out_of_stock"));
    assert_eq!(err.message(), "refused: out of stock");
    assert_eq!(err.message_name(), Some("test.Fail"));
}

#[tokio::test]
async fn no_responders_and_timeouts_are_told_apart() {
    let server = NatsServer::start();
    let _peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(|s: Sleep, _| async move {
            tokio::time::sleep(Duration::from_millis(s.millis)).await;
            Ok(s.millis)
        })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    let none = client.send(Add { a: 1, b: 1 }).await.unwrap_err();
    assert_eq!(none.kind(), ErrorKind::NoHandler, "{none}");
    assert!(none.to_string().contains("test.Add"), "{none}");
    let slow = client
        .send_with(
            Sleep { millis: 30_000 },
            Metadata::new().with_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(slow.kind(), ErrorKind::Timeout, "{slow}");
    assert!(slow.to_string().contains("test.Sleep"), "{slow}");
    assert!(slow.to_string().contains("300ms"), "{slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let server = NatsServer::start();
    let entered = Arc::new(AtomicUsize::new(0));
    let e = entered.clone();
    let peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(move |s: Sleep, _| {
            let e = e.clone();
            async move {
                e.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(s.millis)).await;
                Ok(s.millis)
            }
        })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.send(Sleep { millis: 500 }).await
        }));
    }
    eventually("10 requests in flight", || {
        entered.load(Ordering::SeqCst) == 10
    })
    .await;
    peer.shutdown().await.unwrap();
    for c in calls {
        assert_eq!(
            c.await.unwrap().unwrap(),
            500,
            "a request in flight was lost"
        );
    }
    let after = client.send(Sleep { millis: 1 }).await.unwrap_err();
    assert_eq!(after.kind(), ErrorKind::NoHandler, "{after}");
}

#[tokio::test]
async fn oversize_messages_get_a_clear_error() {
    let server = NatsServer::start();
    let _peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(|b: Blob, _| async move { Ok(b.data.len()) })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    let err = client
        .send(Blob {
            data: "x".repeat(2 * 1024 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert_eq!(client.send(Blob { data: "ok".into() }).await.unwrap(), 2);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BigNews {
    data: String,
}
impl catga_core::Message for BigNews {
    const NAME: &'static str = "test.BigNews";
}
impl catga_core::Event for BigNews {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BigRecord {
    data: String,
}
impl catga_core::Message for BigRecord {
    const NAME: &'static str = "test.BigRecord";
}
impl catga_core::Event for BigRecord {
    const RELIABLE: bool = true;
}

/// An event over `max_payload`, core or stored, is refused for good (not
/// retryable): sending it again cannot help, so an outbox relay dead-letters
/// it instead of taking it for a transport outage and stalling behind it.
#[tokio::test]
async fn oversize_events_are_refused_for_good() {
    let server = NatsServer::start();
    let client = client(&[server.url()]).await;
    let big = "x".repeat(2 * 1024 * 1024);
    let core = client
        .publish(BigNews { data: big.clone() })
        .await
        .unwrap_err();
    let stored = client.publish(BigRecord { data: big }).await.unwrap_err();
    for err in [core, stored] {
        assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("max_payload"), "{err}");
    }
    client
        .publish(BigRecord { data: "ok".into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_callers_timeout_is_the_handlers_deadline_and_the_default_applies_when_absent() {
    let server = NatsServer::start();
    let _peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(|_: Sleep, ctx| async move {
            Ok(ctx.remaining().map_or(0, |d| d.as_millis() as u64))
        })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    let short = client
        .send_with(
            Sleep { millis: 0 },
            Metadata::new().with_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!((1..=5_000).contains(&short), "{short} ms left of 5 s");
    // The default timeout does not travel (it is the protocol's default), and
    // the receiver applies it.
    let default = client.send(Sleep { millis: 0 }).await.unwrap();
    let d = catga_core::transport::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64;
    assert!(
        (d - 5_000..=d).contains(&default),
        "{default} ms left of the default {d} ms"
    );
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Expand {
    bytes: usize,
}
impl catga_core::Message for Expand {
    const NAME: &'static str = "test.Expand";
}
impl catga_core::Request for Expand {
    type Response = String;
}

#[tokio::test]
async fn an_oversize_reply_becomes_a_clear_error_and_the_peer_keeps_serving() {
    let server = NatsServer::start();
    let _peer = Catga::builder()
        .transport(connect(&[server.url()]).await)
        .request_fn(|e: Expand, _| async move { Ok("x".repeat(e.bytes)) })
        .start()
        .await
        .unwrap();
    let client = client(&[server.url()]).await;
    // nats-server's default max_payload is 1 MiB.
    let err = client.send(Expand { bytes: 2 << 20 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(client.send(Expand { bytes: 3 }).await.unwrap(), "xxx");
}

/// A transport over a client the application already connected serves and
/// sends like one Catga connected itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_wraps_a_client_the_application_already_has() {
    let server = NatsServer::start();
    let own = async_nats::connect(server.url()).await.unwrap();
    let options = catga_nats::NatsOptions::new([server.url()]);
    let peer = Catga::builder()
        .service("calc")
        .transport(catga_nats::NatsTransport::from_client(
            own.clone(),
            options.clone(),
        ))
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .start()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("gateway")
        .transport(catga_nats::NatsTransport::from_client(own, options))
        .build()
        .unwrap();
    assert_eq!(client.send(Add { a: 2, b: 3 }).await.unwrap(), 5);
    peer.shutdown().await.unwrap();
}

/// Over NATS, a duplicate is compared by the bytes it arrived in: the same
/// id with another payload is `conflict` (`catga.idempotency_key_reused`),
/// the same bytes get the stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_message_id_with_another_payload_is_refused_over_nats() {
    let server = NatsServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let peer = Catga::builder()
        .service("calc")
        .transport(connect(&[server.url()]).await)
        .idempotency(catga_core::store::MemoryIdempotencyStore::new())
        .idempotent::<Add>()
        .request_fn(move |a: Add, _| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(a.a + a.b)
            }
        })
        .start()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("gateway")
        .transport(connect(&[server.url()]).await)
        .build()
        .unwrap();
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    assert_eq!(
        client
            .send_with(Add { a: 1, b: 2 }, meta.clone())
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        client
            .send_with(Add { a: 1, b: 2 }, meta.clone())
            .await
            .unwrap(),
        3
    );
    let e = client
        .send_with(Add { a: 1, b: 3 }, meta)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(e.code(), Some("catga.idempotency_key_reused"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    peer.shutdown().await.unwrap();
}
