use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::behavior::{Behavior, Envelope, Next, Reply};
use catga_core::relay::RelayOptions;
use catga_core::store::{OutboxEntry, OutboxRecord, OutboxStore};
use catga_core::{Catga, Context, Result};
use catga_nats::{NatsOptions, NatsTransport};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{NatsServer, RedisServer};
use futures_util::future::BoxFuture;

use crate::common::*;

/// An outbox whose relay "crashes" after publishing: it never acknowledges.
struct NeverAcks(RedisStore);

impl OutboxStore for NeverAcks {
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>> {
        self.0.append(records)
    }
    fn claim<'a>(
        &'a self,
        c: &'a str,
        max: usize,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>> {
        self.0.claim(c, max, idle)
    }
    fn ack<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn dead_letter<'a>(&'a self, e: &'a OutboxEntry, r: &'a str) -> BoxFuture<'a, Result<()>> {
        self.0.dead_letter(e, r)
    }
    fn backlog(&self) -> BoxFuture<'_, Result<usize>> {
        self.0.backlog()
    }
}

/// Counts deliveries before idempotency filters them.
struct CountDeliveries(Arc<AtomicUsize>);
impl Behavior for CountDeliveries {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(env).await
    }
}

/// An event's amount and its `tenant` header, as a handler saw them.
type Relayed = (u64, Option<String>);

fn fast_relay() -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(10),
        min_idle: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn orders_peer(
    nats: &str,
    store: RedisStore,
    outbox: Arc<dyn OutboxStore>,
) -> catga_core::Peer {
    Catga::builder()
        .service("payments")
        .transport(
            NatsTransport::connect(NatsOptions::new([nats]))
                .await
                .unwrap(),
        )
        .behavior(Idempotency::new(store))
        .outbox_with(outbox, fast_relay())
        .request_fn(|c: Charge, ctx: Context| async move {
            ctx.publish(Charged { cents: c.cents }).await?;
            Ok(format!("charged {}", c.cents))
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dying_between_publish_and_ack_still_delivers_and_the_effect_happens_once() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let opts = || RedisOptions::new(redis.url());

    let deliveries = Arc::new(AtomicUsize::new(0));
    let effects: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let e = effects.clone();
    let ledger = Catga::builder()
        .service("ledger")
        .transport(
            NatsTransport::connect(NatsOptions::new([nats.url()]))
                .await
                .unwrap(),
        )
        .behavior(CountDeliveries(deliveries.clone()))
        .behavior(Idempotency::new(RedisStore::connect(opts()).await.unwrap()))
        .event_fn(move |c: Charged, _| {
            let e = e.clone();
            async move {
                *e.lock().unwrap().entry(c.cents).or_default() += 1;
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();

    let store = RedisStore::connect(opts()).await.unwrap();
    let crashing = orders_peer(
        &nats.url(),
        store.clone(),
        Arc::new(NeverAcks(store.clone())),
    )
    .await;
    assert_eq!(
        crashing
            .send(Charge {
                cents: 700,
                fail: false
            })
            .await
            .unwrap(),
        "charged 700"
    );
    eventually("the first delivery", || {
        deliveries.load(Ordering::SeqCst) >= 1
    })
    .await;
    crashing.shutdown().await.unwrap();

    // A healthy peer's relay reclaims the unacknowledged entry and publishes again.
    let healthy_store = RedisStore::connect(opts()).await.unwrap();
    let healthy = orders_peer(
        &nats.url(),
        healthy_store.clone(),
        Arc::new(healthy_store.clone()),
    )
    .await;
    eventually("the redelivery", || deliveries.load(Ordering::SeqCst) >= 2).await;
    let backlog_empty = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !backlog_empty.load(Ordering::SeqCst) {
        backlog_empty.store(
            healthy_store.backlog().await.unwrap() == 0,
            Ordering::SeqCst,
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entry was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *effects.lock().unwrap(),
        HashMap::from([(700, 1)]),
        "the effect happened once"
    );
    healthy.shutdown().await.unwrap();
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_outbox_entries_survive_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start_with_aof();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let records: Vec<OutboxRecord> = (1..=5)
        .map(|cents| OutboxRecord {
            name: "test.Charged".into(),
            payload: catga_core::Format::MsgPack
                .encode(&Charged { cents })
                .unwrap()
                .into(),
            content_type: "application/msgpack".into(),
            message_id: catga_core::new_id(),
            correlation_id: catga_core::new_id(),
            causation_id: None,
            headers: vec![("tenant".into(), "acme".into())],
        })
        .collect();
    store.append(records).await.unwrap();
    assert_eq!(store.backlog().await.unwrap(), 5);
    redis.restart(); // SIGKILL, then start on the same AOF

    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    assert_eq!(
        store.backlog().await.unwrap(),
        5,
        "the entries survived the restart"
    );
    let seen: Arc<Mutex<Vec<Relayed>>> = Arc::default();
    let s = seen.clone();
    let m = Catga::builder()
        .outbox_with(Arc::new(store.clone()), fast_relay())
        .event_fn(move |c: Charged, ctx: Context| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push((c.cents, ctx.headers().get("tenant").map(str::to_owned)));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    eventually("5 relayed events", || seen.lock().unwrap().len() >= 5).await;
    m.shutdown().await.unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        (1..=5)
            .map(|c| (c, Some("acme".to_owned())))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.backlog().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_goes_to_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    store
        .append(vec![OutboxRecord {
            name: "test.Charged".into(),
            payload: vec![0xc1].into(),
            content_type: "application/msgpack".into(),
            message_id: catga_core::new_id(),
            correlation_id: catga_core::new_id(),
            causation_id: None,
            headers: vec![],
        }])
        .await
        .unwrap();
    let m = Catga::builder()
        .outbox_with(Arc::new(store.clone()), fast_relay())
        .event_fn(|_: Charged, _| async { Ok(()) })
        .start()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.dead_letter_count().await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.shutdown().await.unwrap();
    assert_eq!(store.backlog().await.unwrap(), 0);
}

/// A corrupt entry (one a foreign writer or a bug left without its fields) is
/// dead-lettered alone, as stored; the entries behind it flow. Before, it
/// failed every claim of its shard, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_dead_lettered_alone_and_the_rest_flows() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()).outbox_shards(1))
        .await
        .unwrap();
    let raw = redis::Client::open(redis.url()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    let record = |cents: u64| OutboxRecord {
        name: "test.Charged".into(),
        payload: rmp_serde::to_vec_named(&Charged { cents }).unwrap().into(),
        content_type: "application/msgpack".into(),
        message_id: catga_core::new_id(),
        correlation_id: catga_core::new_id(),
        causation_id: None,
        headers: vec![],
    };
    store.append(vec![record(1)]).await.unwrap();
    // The one shard's stream, documented as `{<prefix>:o<shard>}:outbox`.
    let _: String = redis::cmd("XADD")
        .arg("{catga:o0}:outbox")
        .arg("*")
        .arg("garbage")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    store.append(vec![record(2), record(3)]).await.unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let m = Catga::builder()
        .outbox_with(Arc::new(store.clone()), fast_relay())
        .event_fn(move |c: Charged, _| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(c.cents);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let relayed = seen.lock().unwrap().clone();
        let dead = store.dead_letter_count().await.unwrap();
        if relayed.len() >= 3 && dead > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relayed {relayed:?}, dead letters {dead}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.shutdown().await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(store.dead_letter_count().await.unwrap(), 1);
    assert_eq!(store.backlog().await.unwrap(), 0);
    // Kept as stored, with why.
    let dead: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg("{catga:o0}:outbox:dead")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{dead:?}");
    assert!(
        text.contains("garbage") && text.contains("corrupt"),
        "{text}"
    );
}

/// A peer whose idempotent `Charge` publishes `Charged` (held in the outbox,
/// relayed) to a local handler that counts what it sees.
async fn charging_peer(
    store: &RedisStore,
) -> (catga_core::Peer, Arc<std::sync::atomic::AtomicUsize>) {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    let peer = Catga::builder()
        .idempotency(store.clone())
        .idempotent::<Charge>()
        .request_fn(|c: Charge, ctx: Context| async move {
            ctx.publish(Charged { cents: c.cents }).await?;
            Ok("charged".to_owned())
        })
        .event_fn(move |_: Charged, _| {
            let s = s.clone();
            async move {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    (peer, seen)
}

/// An idle peer leaves Redis alone: its relay asks less and less often while
/// the outbox stays empty (about one read per shard per second), instead of
/// every 50 ms; an event stored by a handler still goes out at once (the
/// handler wakes the relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_leaves_redis_alone_and_wakes_for_new_events() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let (peer, seen) = charging_peer(&store).await;
    // Let the relay settle into its idle pace, then count for 4 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = redis.command_counts().values().sum::<u64>();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_second = (redis.command_counts().values().sum::<u64>() - before) / 4;
    eprintln!("an idle peer: {per_second} Redis commands/s");
    // 8 shards read about once a second, and now and then a reclaim: tens,
    // where polling every 50 ms made about 320 per second.
    assert!(
        per_second <= 40,
        "{per_second} commands/s from an idle peer"
    );
    // An event stored now is relayed without waiting for the idle pace.
    let sent = tokio::time::Instant::now();
    peer.send(Charge {
        cents: 5,
        fail: false,
    })
    .await
    .unwrap();
    let deadline = sent + Duration::from_secs(30);
    while seen.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never relayed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peer.shutdown().await.unwrap();
}

/// A Redis that comes back empty (restarted without persistence): the
/// outbox's streams and consumer group are gone. The relay makes them again
/// and events stored afterwards still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_recovers_when_redis_comes_back_empty() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let (peer, seen) = charging_peer(&store).await;
    let relayed = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while seen.load(std::sync::atomic::Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "event {n} never relayed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    peer.send(Charge {
        cents: 1,
        fail: false,
    })
    .await
    .unwrap();
    relayed(1).await;
    redis.restart();
    // The store reconnects by itself; a send may fail until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = peer
        .send(Charge {
            cents: 2,
            fail: false,
        })
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never came back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relayed(2).await;
    peer.shutdown().await.unwrap();
}

/// Two stores connected separately to one Redis, with one key prefix, are
/// one outbox; another server, prefix or shard count is another, and the
/// builder refuses it beside the idempotency store (its held-back events
/// would never be relayed).
#[tokio::test]
async fn the_builder_knows_a_redis_outbox_from_another() {
    let redis = RedisServer::start();
    let elsewhere = RedisServer::start();
    let connect =
        |options: RedisOptions| async move { RedisStore::connect(options).await.unwrap() };
    let here = || RedisOptions::new(redis.url());
    let start = |idempotency: RedisStore, outbox: RedisStore| {
        Catga::builder()
            .idempotency(idempotency)
            .outbox_with(outbox, RelayOptions::default())
            .start()
    };

    let peer = start(connect(here()).await, connect(here()).await)
        .await
        .unwrap();
    peer.shutdown().await.unwrap();

    // The same server by another URL (naming database 0) is the same outbox.
    let another_url = RedisOptions::new(format!("{}0", redis.url()));
    let peer = start(connect(here()).await, connect(another_url).await)
        .await
        .unwrap();
    peer.shutdown().await.unwrap();

    for other in [
        RedisOptions::new(elsewhere.url()),
        here().prefix("elsewhere"),
        // Fewer shards: the entries of the others would never be relayed.
        here().outbox_shards(4),
    ] {
        let err = start(connect(here()).await, connect(other).await)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never be relayed"), "{err}");
    }
}
