use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::transport::memory::MemoryBus;
use catga_core::transport::{Transport, WireMessage};
use catga_core::{Catga, Context, Error, ErrorKind, Format, Metadata, Peer};

use crate::messages::*;

/// Waits until `check` holds, failing after 20 s.
async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(20), check).await;
}

type Seen = Arc<Mutex<HashMap<i64, Vec<usize>>>>;

async fn adder_peer(bus: &MemoryBus, index: usize, seen: Seen) -> Peer {
    Catga::builder()
        .service("calc")
        .transport(bus.transport())
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
    let bus = MemoryBus::new();
    let seen: Seen = Arc::default();
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(adder_peer(&bus, i, seen.clone()).await);
    }
    let client = Catga::builder()
        .service("gateway")
        .transport(bus.transport())
        .start()
        .await
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
async fn events_reach_each_service_once_and_its_copies_share_them() {
    let bus = MemoryBus::new();
    let counts: Arc<Mutex<HashMap<(String, usize), usize>>> = Arc::default();
    let mut peers = Vec::new();
    for (service, copies) in [("billing", 3), ("shipping", 2)] {
        for copy in 0..copies {
            let counts = counts.clone();
            let m = Catga::builder()
                .service(service)
                .transport(bus.transport())
                .event_fn(move |_: Happened, _| {
                    let counts = counts.clone();
                    async move {
                        *counts
                            .lock()
                            .unwrap()
                            .entry((service.to_owned(), copy))
                            .or_default() += 1;
                        Ok(())
                    }
                })
                .start()
                .await
                .unwrap();
            peers.push(m);
        }
    }
    let publisher = Catga::builder()
        .service("orders")
        .transport(bus.transport())
        .start()
        .await
        .unwrap();
    for n in 0..30 {
        publisher.publish(Happened { n }).await.unwrap();
    }
    let total = |service: &str| {
        counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    eventually("30 events at each service", || {
        total("billing") == 30 && total("shipping") == 30
    })
    .await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((total("billing"), total("shipping")), (30, 30));
    let billing_copies = counts
        .lock()
        .unwrap()
        .keys()
        .filter(|(s, _)| s == "billing")
        .count();
    assert_eq!(billing_copies, 3, "copies of a service share its events");
}

#[tokio::test]
async fn a_publishing_service_handles_its_own_event_once() {
    let bus = MemoryBus::new();
    let count = Arc::new(AtomicUsize::new(0));
    let mut copies = Vec::new();
    for _ in 0..3 {
        let count = count.clone();
        let m = Catga::builder()
            .service("orders")
            .transport(bus.transport())
            .event_fn(move |_: Happened, _| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start()
            .await
            .unwrap();
        copies.push(m);
    }
    copies[0].publish(Happened { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn remote_handler_errors_keep_kind_and_code() {
    let bus = MemoryBus::new();
    let _server = Catga::builder()
        .transport(bus.transport())
        .request_fn(|f: Fail, _| async move { Err::<(), _>(Error::handler(f.code, "refused")) })
        .start()
        .await
        .unwrap();
    let client = Catga::builder().transport(bus.transport()).build().unwrap();
    let err = client
        .send(Fail {
            code: "orders.out_of_stock".into(),
            retryable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.code(), Some("orders.out_of_stock"));
}

#[tokio::test]
async fn no_responders_and_timeouts_are_told_apart() {
    let bus = MemoryBus::new();
    let _server = Catga::builder()
        .transport(bus.transport())
        .request_fn(|s: Sleep, _| async move {
            tokio::time::sleep(Duration::from_millis(s.millis)).await;
            Ok(())
        })
        .start()
        .await
        .unwrap();
    let client = Catga::builder().transport(bus.transport()).build().unwrap();
    let none = client.send(Unhandled).await.unwrap_err();
    assert_eq!(none.kind(), ErrorKind::NoHandler);
    assert!(none.to_string().contains("test.Unhandled"), "{none}");
    let slow = client
        .send_with(
            Sleep { millis: 30_000 },
            Metadata::new().with_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert_eq!(slow.kind(), ErrorKind::Timeout);
    assert!(slow.to_string().contains("test.Sleep"), "{slow}");
}

#[tokio::test]
async fn malformed_payloads_and_unknown_names_get_error_replies_and_the_peer_keeps_serving() {
    let bus = MemoryBus::new();
    let _server = Catga::builder()
        .transport(bus.transport())
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .start()
        .await
        .unwrap();
    let raw = bus.transport();
    let meta = Metadata::new();
    let garbage = WireMessage::new("test.Add", vec![0xc1, 0xff, 0x00], Format::MsgPack, &meta);
    let err = raw
        .request(garbage, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec);
    assert!(err.to_string().contains("test.Add"), "{err}");

    let client = Catga::builder().transport(bus.transport()).build().unwrap();
    assert_eq!(client.send(Add { a: 20, b: 22 }).await.unwrap(), 42);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let bus = MemoryBus::new();
    let done = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let (d, e) = (done.clone(), entered.clone());
    let server = Catga::builder()
        .transport(bus.transport())
        .request_fn(move |s: Sleep, _| {
            let (d, e) = (d.clone(), e.clone());
            async move {
                e.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(s.millis)).await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let client = Catga::builder().transport(bus.transport()).build().unwrap();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.send(Sleep { millis: 300 }).await
        }));
    }
    eventually("5 requests in flight", || {
        entered.load(Ordering::SeqCst) == 5
    })
    .await;
    assert_eq!(done.load(Ordering::SeqCst), 0);
    server.shutdown().await.unwrap();
    assert_eq!(
        done.load(Ordering::SeqCst),
        5,
        "shutdown returned before in-flight work finished"
    );
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // After shutdown the peer takes nothing new.
    let err = client.send(Sleep { millis: 0 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoHandler);
}

#[tokio::test]
async fn route_remote_spreads_work_over_every_copy_including_this_one() {
    let bus = MemoryBus::new();
    let seen: Seen = Arc::default();
    let mut peers = Vec::new();
    for i in 0..2 {
        let seen = seen.clone();
        let m = Catga::builder()
            .transport(bus.transport())
            .route_remote::<Add>()
            .request_fn(move |a: Add, _: Context| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().entry(a.a).or_default().push(i);
                    Ok(a.a)
                }
            })
            .start()
            .await
            .unwrap();
        peers.push(m);
    }
    for i in 0..20 {
        peers[0].send(Add { a: i, b: 0 }).await.unwrap();
    }
    let by_peer1 = seen
        .lock()
        .unwrap()
        .values()
        .filter(|v| v == &&vec![1])
        .count();
    assert!(by_peer1 > 0, "remote routing sent work to the other copy");
    let err = Catga::builder().route_remote::<Add>().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}
