use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::{Catga, ErrorKind, Metadata};
use catga_test_support::{NatsCluster, NatsServer};

use crate::common::*;

async fn adder(urls: &[String], calls: Arc<AtomicUsize>) -> catga_core::Peer {
    Catga::builder()
        .service("calc")
        .transport(connect(urls).await)
        .request_fn(move |a: Add, _| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(a.a + a.b)
            }
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_get_error_replies_and_the_peer_keeps_serving() {
    let server = NatsServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let _peer = adder(&[server.url()], calls.clone()).await;
    let raw = async_nats::connect(server.url()).await.unwrap();

    let reply = raw
        .request("catga.req.test.Add", vec![0xc1, 0xff, 0x13].into())
        .await
        .unwrap();
    let h = reply.headers.unwrap();
    assert_eq!(h.get("Catga-Status").unwrap().as_str(), "error");
    assert_eq!(h.get("Catga-Error-Kind").unwrap().as_str(), "codec");
    assert!(String::from_utf8_lossy(&reply.payload).contains("test"));

    let mut bad = async_nats::HeaderMap::new();
    bad.insert("Catga-Message-Id", "nope");
    let reply = raw
        .request_with_headers("catga.req.test.Add", bad, vec![0x80].into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(text.contains("Catga-Message-Id"), "{text}");

    let mut bad = async_nats::HeaderMap::new();
    bad.insert("Content-Type", "text/xml");
    let reply = raw
        .request_with_headers("catga.req.test.Add", bad, "<a/>".into())
        .await
        .unwrap();
    assert_eq!(
        reply.headers.unwrap().get("Catga-Status").unwrap().as_str(),
        "error"
    );

    // A hand-written valid request, as another language's client would send it.
    let mut ok = async_nats::HeaderMap::new();
    ok.insert("Content-Type", "application/json");
    let reply = raw
        .request_with_headers("catga.req.test.Add", ok, r#"{"a":40,"b":2}"#.into())
        .await
        .unwrap();
    // Success: no `Catga-Status` (or `ok`), the content type of the request.
    let h = reply.headers.unwrap();
    assert!(h.get("Catga-Status").is_none_or(|s| s.as_str() == "ok"));
    assert_eq!(h.get("Content-Type").unwrap().as_str(), "application/json");
    assert_eq!(&reply.payload[..], b"42");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "bad input never reached the handler"
    );

    let client = client(&[server.url()]).await;
    assert_eq!(client.send(Add { a: 1, b: 2 }).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reconnect_after_a_server_restart() {
    let mut server = NatsServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let _peer = adder(&[server.url()], calls.clone()).await;
    let client = client(&[server.url()]).await;
    assert_eq!(client.send(Add { a: 1, b: 1 }).await.unwrap(), 2);
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let quick = Metadata::new().with_timeout(Duration::from_secs(2));
        match client.send_with(Add { a: 2, b: 2 }, quick).await {
            Ok(v) => {
                assert_eq!(v, 4);
                break;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::NoHandler | ErrorKind::Transport | ErrorKind::Timeout
                    ),
                    "{e}"
                );
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_a_peer_is_connected_to_does_not_stop_it_serving() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let calls = Arc::new(AtomicUsize::new(0));
    // The peer connects to node 0 first (the others are its fallbacks).
    let _peer = Catga::builder()
        .service("calc")
        .transport(
            catga_nats::NatsTransport::connect(options(&urls).name("peer-on-node-0"))
                .await
                .unwrap(),
        )
        .request_fn({
            let calls = calls.clone();
            move |a: Add, _| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(a.a + a.b)
                }
            }
        })
        .start()
        .await
        .unwrap();
    let client = client(&[urls[1].clone(), urls[2].clone()]).await;
    let mut ok = false;
    for _ in 0..100 {
        let quick = Metadata::new().with_timeout(Duration::from_secs(2));
        if client.send_with(Add { a: 1, b: 1 }, quick).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the cluster never routed a request");
    cluster.kill(0);
    let before = calls.load(Ordering::SeqCst);
    // A request routed to the dead node's subscription before the cluster
    // noticed is lost: give each try a short timeout, not the default 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let quick = Metadata::new().with_timeout(Duration::from_secs(2));
        if let Ok(v) = client.send_with(Add { a: 5, b: 5 }, quick).await {
            assert_eq!(v, 10);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer never served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls.load(Ordering::SeqCst) > before);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Touchy {
    #[serde(deserialize_with = "panics_on_boom")]
    word: String,
}
impl catga_core::Message for Touchy {
    const NAME: &'static str = "test.Touchy";
}
impl catga_core::Request for Touchy {
    type Response = usize;
}

/// A user's `Deserialize` that panics on one input.
fn panics_on_boom<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let word = <String as serde::Deserialize>::deserialize(d)?;
    assert!(word != "boom", "Deserialize panicked on `boom`");
    Ok(word)
}

/// A panic in a user's `Deserialize` becomes an error reply; the subscription
/// keeps serving the next requests (before, the panic ended its loop, and
/// every later request waited for its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_deserialize_is_an_error_reply_and_serving_goes_on() {
    let server = NatsServer::start();
    let peer = Catga::builder()
        .service("words")
        .transport(connect(&[server.url()]).await)
        .request_fn(|t: Touchy, _| async move { Ok(t.word.len()) })
        .start()
        .await
        .unwrap();
    let caller = client(&[server.url()]).await;
    let timeout = || Metadata::new().with_timeout(Duration::from_secs(5));
    for _ in 0..3 {
        let e = caller
            .send_with(
                Touchy {
                    word: "boom".into(),
                },
                timeout(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
        assert!(e.to_string().contains("panicked"), "{e}");
        let n = caller
            .send_with(
                Touchy {
                    word: "fine".into(),
                },
                timeout(),
            )
            .await
            .unwrap();
        assert_eq!(n, 4);
    }
    peer.shutdown().await.unwrap();
}
