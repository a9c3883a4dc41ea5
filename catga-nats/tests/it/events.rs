use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::{Catga, Error};
use catga_nats::{JetStreamOptions, NatsTransport};
use catga_test_support::NatsServer;
use futures_util::StreamExt;

use crate::common::*;

type Counts = Arc<Mutex<HashMap<(String, usize), usize>>>;

async fn listener(
    url: &str,
    service: &'static str,
    copy: usize,
    counts: Counts,
) -> catga_core::Peer {
    Catga::builder()
        .service(service)
        .transport(connect(&[url.to_owned()]).await)
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
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_reach_each_service_once_and_copies_share_them() {
    let server = NatsServer::start();
    let counts: Counts = Arc::default();
    let mut peers = Vec::new();
    for copy in 0..2 {
        peers.push(listener(&server.url(), "billing", copy, counts.clone()).await);
        peers.push(listener(&server.url(), "shipping", copy, counts.clone()).await);
    }
    let publisher = Catga::builder()
        .service("orders")
        .transport(connect(&[server.url()]).await)
        .build()
        .unwrap();
    for n in 0..40 {
        publisher.publish(Happened { n }).await.unwrap();
    }
    let total = |s: &str| {
        counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((svc, _), _)| svc == s)
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    eventually("40 events at each service", || {
        total("billing") >= 40 && total("shipping") >= 40
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        (total("billing"), total("shipping")),
        (40, 40),
        "each service exactly once"
    );
    let copies_used = counts.lock().unwrap().len();
    assert_eq!(copies_used, 4, "copies of a service share its events");
}

async fn stored_listener(url: &str, seen: Arc<Mutex<Vec<u32>>>) -> catga_core::Peer {
    let nats = NatsTransport::connect(options(&[url.to_owned()]).reliable_event::<Stored>())
        .await
        .unwrap();

    Catga::builder()
        .service("ledger")
        .transport(nats)
        .event_fn(move |e: Stored, _| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.n);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_events_published_while_a_service_is_down_arrive_when_it_returns() {
    let server = NatsServer::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let first = stored_listener(&server.url(), seen.clone()).await;
    let publisher = Catga::builder()
        .service("orders")
        .transport(
            NatsTransport::connect(options(&[server.url()]).reliable_event::<Stored>())
                .await
                .unwrap(),
        )
        .build()
        .unwrap();
    for n in 0..5 {
        publisher.publish(Stored { n }).await.unwrap();
    }
    eventually("first 5 events", || seen.lock().unwrap().len() == 5).await;
    first.shutdown().await.unwrap();
    for n in 5..15 {
        publisher.publish(Stored { n }).await.unwrap();
    }
    let again = stored_listener(&server.url(), seen.clone()).await;
    eventually("all 15 events", || seen.lock().unwrap().len() >= 15).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..15).collect::<Vec<_>>(),
        "each event once, none lost"
    );
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reliable_event_is_dead_lettered_after_max_deliveries() {
    let server = NatsServer::start();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut dlq = raw.subscribe("catga.dlq.test.Stored").await.unwrap();
    raw.flush().await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let nats = NatsTransport::connect(
        options(&[server.url()])
            .reliable_event::<Stored>()
            .jetstream(JetStreamOptions {
                max_deliveries: 3,
                backoff: Duration::from_millis(50),
                ..Default::default()
            }),
    )
    .await
    .unwrap();
    let _consumer = Catga::builder()
        .service("ledger")
        .transport(nats)
        .event_fn(move |_: Stored, _| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Err(Error::handler("ledger.unavailable", "ledger is closed").with_retryable(true))
            }
        })
        .start()
        .await
        .unwrap();
    let publisher = Catga::builder()
        .service("orders")
        .transport(
            NatsTransport::connect(options(&[server.url()]).reliable_event::<Stored>())
                .await
                .unwrap(),
        )
        .build()
        .unwrap();
    publisher.publish(Stored { n: 7 }).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(30), dlq.next())
        .await
        .expect("a dead-letter entry")
        .unwrap();
    let h = dead.headers.unwrap();
    assert_eq!(
        h.get("Catga-Error-Code").unwrap().as_str(),
        "ledger.unavailable"
    );
    assert_eq!(h.get("Catga-Deliveries").unwrap().as_str(), "3");
    assert_eq!(h.get("Catga-Name").unwrap().as_str(), "test.Stored");
    assert!(
        h.get("Catga-Error-Message")
            .unwrap()
            .as_str()
            .contains("ledger is closed")
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let decoded: Stored = catga_core::Format::MsgPack.decode(&dead.payload).unwrap();
    assert_eq!(decoded, Stored { n: 7 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "no delivery after dead-lettering"
    );
}

/// The event and dead-letter streams keep one copy per node, up to three: a
/// stream on a 3-node cluster survives the loss of a node; on a single server
/// it has the one copy there is. Both are bounded in bytes (256 MiB), dropping
/// the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_replicated_across_the_cluster() {
    async fn replicas(urls: &[String]) -> Vec<usize> {
        let m = Catga::builder()
            .service("audit")
            .transport(
                NatsTransport::connect(options(urls).reliable_event::<Stored>())
                    .await
                    .unwrap(),
            )
            .event_fn(|_: Stored, _| async { Ok(()) })
            .start()
            .await
            .unwrap();
        let client = async_nats::connect(urls[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut out = Vec::new();
        for name in ["CATGA_EVENTS", "CATGA_DLQ"] {
            let mut stream = js.get_stream(name).await.unwrap();
            let config = stream.info().await.unwrap().config.clone();
            assert_eq!(config.max_bytes, 256 << 20, "{name}");
            assert_eq!(
                config.discard,
                async_nats::jetstream::stream::DiscardPolicy::Old
            );
            out.push(config.num_replicas);
        }
        m.shutdown().await.unwrap();
        out
    }
    let cluster = catga_test_support::NatsCluster::start();
    assert_eq!(replicas(&cluster.urls()).await, [3, 3]);
    let single = NatsServer::start();
    assert_eq!(replicas(&[single.url()]).await, [1, 1]);
}

/// An event whose type declares itself reliable: no `reliable_event` on
/// either side's options.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Settled {
    n: u32,
}
impl catga_core::Message for Settled {
    const NAME: &'static str = "test.Settled";
}
impl catga_core::Event for Settled {
    const RELIABLE: bool = true;
}

async fn settled_listener(url: &str, seen: Arc<Mutex<Vec<u32>>>) -> catga_core::Peer {
    Catga::builder()
        .service("ledger")
        .transport(connect(&[url.to_owned()]).await)
        .event_fn(move |e: Settled, _| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.n);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap()
}

/// Reliability declared once, on the type, is honoured by publisher and
/// handler alike: events published while the handling service is down are
/// stored and arrive when it returns; the stream holds those and no core
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_declared_reliable_on_its_type_is_stored_and_core_events_are_not() {
    let server = NatsServer::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let first = settled_listener(&server.url(), seen.clone()).await;
    first.shutdown().await.unwrap();
    let publisher = Catga::builder()
        .service("orders")
        .transport(connect(&[server.url()]).await)
        .build()
        .unwrap();
    for n in 0..5 {
        publisher.publish(Settled { n }).await.unwrap();
        publisher.publish(Happened { n }).await.unwrap();
    }
    publisher.flush_transport().await.unwrap();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream("CATGA_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, ["catga.rel.>"]);
    assert_eq!(info.state.messages, 5, "the reliable events, no core event");
    let again = settled_listener(&server.url(), seen.clone()).await;
    eventually("the 5 stored events", || seen.lock().unwrap().len() >= 5).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..5).collect::<Vec<_>>());
    again.shutdown().await.unwrap();
}

/// A stream made by an earlier version (over every event subject) is
/// narrowed to the reliable ones when a peer of this version starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_of_an_earlier_version_is_narrowed_to_reliable_events() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CATGA_EVENTS".into(),
        subjects: vec!["catga.evt.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let peer = settled_listener(&server.url(), seen.clone()).await;
    let mut stream = js.get_stream("CATGA_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, ["catga.rel.>"]);
    let publisher = Catga::builder()
        .service("orders")
        .transport(connect(&[server.url()]).await)
        .build()
        .unwrap();
    publisher.publish(Settled { n: 7 }).await.unwrap();
    eventually("the event after the upgrade", || {
        seen.lock().unwrap().contains(&7)
    })
    .await;
    peer.shutdown().await.unwrap();
}

/// On the 3-node cluster, reliable events keep flowing while the node that
/// leads the event stream is SIGKILLed (R3): every publish that was
/// acknowledged is delivered, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_events_survive_the_stream_leader_being_killed() {
    let mut cluster = catga_test_support::NatsCluster::start();
    let urls = cluster.urls();
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let s = seen.clone();
    let listener = Catga::builder()
        .service("ledger")
        .transport(connect(&urls).await)
        .event_fn(move |e: Settled, _| {
            let s = s.clone();
            async move {
                s.lock().unwrap().insert(e.n);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let publisher = Catga::builder()
        .service("orders")
        .transport(connect(&urls).await)
        .build()
        .unwrap();
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let nats = async_nats::connect(addrs).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let leader = js
        .get_stream("CATGA_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let leader: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    let mut acked = Vec::new();
    for n in 0..120u32 {
        if n == 40 {
            cluster.kill(leader);
        }
        // A publish the cluster could not take during the election is
        // retried with the same message id (the stream drops a duplicate).
        let id = catga_core::new_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let meta = catga_core::Metadata::new().with_message_id(id);
            match publisher.publish_with(Settled { n }, meta).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no publish taken for 90 s after the kill: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acked.push(n);
    }
    eventually("every acknowledged event delivered", || {
        let seen = seen.lock().unwrap();
        acked.iter().all(|n| seen.contains(n))
    })
    .await;
    listener.shutdown().await.unwrap();
}
