//! The whole inbound path, property-tested over a real server: arbitrary
//! NATS header names and values and arbitrary payloads (sometimes a valid
//! message) sent to a peer's request subject always get an answer: the
//! response, or an error whose kind is one docs/protocol.md lists. The peer
//! never panics and keeps serving.

use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use catga_core::Catga;
use catga_test_support::NatsServer;
use proptest::prelude::*;

use crate::common::*;

/// The error kinds docs/protocol.md documents for `Catga-Error-Kind`.
const DOCUMENTED: [&str; 13] = [
    "no_handler",
    "duplicate_handler",
    "handler",
    "validation",
    "timeout",
    "transport",
    "store",
    "codec",
    "cancelled",
    "overloaded",
    "in_progress",
    "config",
    "conflict",
];

/// One request as a client in another language might send it.
#[derive(Debug, Clone)]
struct Wire {
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Catga's own headers, in any case, with arbitrary values.
        prop::sample::select(vec![
            "Catga-Message-Id",
            "catga-correlation-id",
            "CATGA-CAUSATION-ID",
            "Content-Type",
            "Catga-Deadline",
            "Catga-Timeout-Ms",
            "Catga-Handled-By",
            "Catga-Fence",
            "traceparent",
            "Nats-Msg-Id",
        ])
        .prop_map(str::to_owned),
        "[!-9;-~]{1,24}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,48}",
        Just("application/json".to_owned()),
        Just("application/msgpack".to_owned()),
        Just("01929d5e-7c1a-7000-8000-000000000000".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        // A valid `Add` in MessagePack and in JSON, to reach the handler.
        (any::<i64>(), any::<i64>())
            .prop_map(|(a, b)| { rmp_serde::to_vec_named(&Add { a: a / 2, b: b / 2 }).unwrap() }),
        (any::<i32>(), any::<i32>())
            .prop_map(|(a, b)| format!(r#"{{"a":{a},"b":{b}}}"#).into_bytes()),
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    (
        prop::collection::vec((header_name(), header_value()), 0..6),
        payload(),
    )
        .prop_map(|(headers, payload)| Wire { headers, payload })
}

#[test]
fn any_request_on_the_wire_gets_a_response_or_a_documented_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let (peer, client) = runtime.block_on(async {
        let peer = Catga::builder()
            .service("calc")
            .transport(connect(std::slice::from_ref(&url)).await)
            .request_fn(|a: Add, _| async move { Ok(a.a.wrapping_add(a.b)) })
            .start()
            .await
            .unwrap();
        (peer, async_nats::connect(url.as_str()).await.unwrap())
    });
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let answered_ok = std::sync::atomic::AtomicU32::new(0);
    proptest!(config, |(w in wire())| {
        let mut headers = HeaderMap::new();
        for (n, v) in &w.headers {
            // What a NATS client can put on the wire at all.
            if let (Ok(n), Ok(v)) = (n.parse::<HeaderName>(), v.parse::<HeaderValue>()) {
                headers.append(n, v);
            }
        }
        let reply = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                client.request_with_headers("catga.req.test.Add", headers, w.payload.clone().into()),
            )
            .await
        });
        let reply = reply.expect("an answer, not silence").expect("a reply, not no-responders");
        let status = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Catga-Status"))
            .map(|v| v.as_str().to_owned());
        match status.as_deref() {
            None | Some("ok") => {
                answered_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some("error") => {
                let kind = reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Catga-Error-Kind"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                prop_assert!(DOCUMENTED.contains(&kind.as_str()), "undocumented kind `{}`", kind);
                prop_assert!(!reply.payload.is_empty(), "an error says why");
            }
            Some(other) => prop_assert!(false, "unknown status `{}`", other),
        }
    });
    // Valid messages among the cases reached the handler, and the peer still
    // serves a plain request.
    assert!(
        answered_ok.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no case reached the handler"
    );
    runtime.block_on(async {
        let m = Catga::builder()
            .service("gateway")
            .transport(connect(std::slice::from_ref(&url)).await)
            .build()
            .unwrap();
        assert_eq!(m.send(Add { a: 2, b: 3 }).await.unwrap(), 5);
        peer.shutdown().await.unwrap();
    });
}
