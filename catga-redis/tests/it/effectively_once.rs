//! The effectively-once guarantees against a real Redis, with the faults that
//! used to break them: a handler outliving its lease, a peer paused past it, a
//! leader whose Redis stops answering, fences, saga listing and retention, and
//! relay consumers left by dead peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::leader::LeaderTask;
use catga_core::saga::{Saga, SagaStore, Step};
use catga_core::store::{LockStore, OutboxStore};
use catga_core::{Catga, Context, ErrorKind, Metadata};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{Fault, FaultProxy, RedisServer};
use tokio::time::Instant;

use crate::common::{Charge, Charged, Isolated, eventually};

/// A handler that runs three leases long keeps its claim by renewing it: a
/// duplicate arriving meanwhile waits for the outcome instead of charging again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_longer_than_its_lease_renews_its_claim_and_runs_once() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let m = Catga::builder()
        .behavior(
            Idempotency::new(store)
                .lease(Duration::from_millis(300))
                .wait(Duration::from_secs(20)),
        )
        .request_fn(move |c: Charge, _| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(900)).await;
                Ok(format!("charged {}", c.cents))
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let charge = Charge {
        cents: 5,
        fail: false,
    };
    let first = {
        let (m, c) = (m.clone(), charge.clone());
        tokio::spawn(async move { m.send_with(c, Metadata::new().with_message_id(id)).await })
    };
    eventually("the first attempt", || runs.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // past one lease
    let second = m
        .send_with(charge, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().unwrap(), second);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
}

/// A peer whose Redis connection stalls past the lease (as in a pause) cannot
/// renew; another peer takes the key; the first peer's completion is refused
/// and reported, and only the winner's event reaches the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_a_stall_past_the_lease_is_refused_and_reported() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port());
    let slow_store =
        RedisStore::connect(RedisOptions::new(proxy.url("redis")).timeout(Duration::from_secs(30)))
            .await
            .unwrap();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let peer = |store: RedisStore, runs: Arc<AtomicUsize>, hold: Duration| {
        Catga::builder()
            .behavior(
                Idempotency::new(store.clone())
                    .lease(Duration::from_millis(300))
                    .wait(Duration::from_secs(20)),
            )
            .outbox_without_relay(Arc::new(store))
            .request_fn(move |c: Charge, ctx: Context| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    ctx.publish(Charged { cents: c.cents }).await?;
                    tokio::time::sleep(hold).await;
                    Ok("charged".to_owned())
                }
            })
            .build()
            .unwrap()
    };
    let stalled = peer(slow_store, runs.clone(), Duration::from_millis(200));
    let healthy = peer(store.clone(), runs.clone(), Duration::ZERO);
    let id = catga_core::new_id();
    let charge = Charge {
        cents: 7,
        fail: false,
    };
    let first = {
        let c = charge.clone();
        tokio::spawn(async move {
            stalled
                .send_with(c, Metadata::new().with_message_id(id))
                .await
        })
    };
    eventually("the first attempt", || runs.load(Ordering::SeqCst) == 1).await;
    proxy.set(Fault::Stall);
    tokio::time::sleep(Duration::from_millis(800)).await; // the lease runs out
    healthy
        .send_with(charge, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    proxy.set(Fault::Pass);
    let lost = first.await.unwrap().unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::Conflict, "{lost}");
    assert_eq!(lost.code(), Some("catga.claim_lost"));
    assert_eq!(store.backlog().await.unwrap(), 1, "one event, the winner's");
}

/// Fences move only when a lock is taken, so the counter names the latest term:
/// followers asking for a held lock do not move it.
#[tokio::test]
async fn fences_move_only_on_a_successful_acquire() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    let lease = store.try_acquire("report", ttl).await.unwrap().unwrap();
    for _ in 0..5 {
        assert!(store.try_acquire("report", ttl).await.unwrap().is_none());
    }
    assert_eq!(store.current_fence("report").await.unwrap(), lease.fence);
    assert!(store.release("report", &lease.token).await.unwrap());
    let next = store.try_acquire("report", ttl).await.unwrap().unwrap();
    // Above the last (at least Redis's clock in microseconds, which has
    // moved on since).
    assert!(next.fence > lease.fence);
    assert_eq!(store.current_fence("report").await.unwrap(), next.fence);
    assert_eq!(store.current_fence("never-held").await.unwrap(), 0);
}

/// Case 5: a leader whose Redis stops answering (its renewal hangs) ends its
/// term by its own clock before the lease runs out; a peer with a working
/// connection takes over after the lease, and the two never run together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_redis_hangs_stops_before_another_can_lead() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port());
    let ttl = Duration::from_millis(900);
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let peer = |url: String, who: &'static str| {
        let (running, overlap) = (running.clone(), overlap.clone());
        Isolated::named(who, move || async move {
            // A long client timeout: the renewal hangs instead of failing.
            let store =
                RedisStore::connect(RedisOptions::new(url).timeout(Duration::from_secs(60)))
                    .await
                    .unwrap();
            let task = LeaderTask::new("test.billing", move |ctx| {
                let (running, overlap) = (running.clone(), overlap.clone());
                async move {
                    if running.fetch_add(1, Ordering::SeqCst) > 0 {
                        overlap.fetch_add(1, Ordering::SeqCst);
                    }
                    let _term = Uncount(running);
                    ctx.cancelled().await;
                    Ok(())
                }
            })
            .ttl(ttl);
            Catga::builder().lock_store(store).leader(task)
        })
    };
    let first = peer(proxy.url("redis"), "first").await;
    eventually("the first leader", || running.load(Ordering::SeqCst) == 1).await;
    proxy.set(Fault::Stall);
    let stalled = Instant::now();
    eventually("the stalled leader to stop", || {
        running.load(Ordering::SeqCst) == 0
    })
    .await;
    // By its own clock, within about one lease of the stall (the hung renewal
    // alone would have kept it for the client's 60 s timeout).
    assert!(
        stalled.elapsed() < ttl * 3,
        "it stopped {:?} after the stall",
        stalled.elapsed()
    );
    let second = peer(redis.url(), "second").await;
    eventually("the second leader", || running.load(Ordering::SeqCst) == 1).await;
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "never two leaders at once"
    );
    drop((first, second));
}

struct Uncount(Arc<AtomicUsize>);
impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Case 9: a started saga is stored and listed in one step; a finished one
/// leaves the list at once and its state expires after the retention.
#[tokio::test]
async fn sagas_are_listed_with_their_creation_and_expire_after_their_retention() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(
        RedisOptions::new(redis.url()).saga_retention(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let saga = Saga::<u32>::new("test.retained").step(Step::send("charge", |c: &u32| Charge {
        cents: u64::from(*c),
        fail: false,
    }));
    // The step waits until the listing was seen, so the saga cannot finish first.
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let m = Catga::builder()
        .saga_store(Arc::new(store.clone()))
        .saga(saga)
        .request_fn(move |_: Charge, _| {
            let gate = gate.clone();
            async move {
                while !gate.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok("ok".to_owned())
            }
        })
        .start()
        .await
        .unwrap();
    let id = Saga::<u32>::new("test.retained")
        .handle(&m)
        .unwrap()
        .start(3)
        .await
        .unwrap();
    assert_eq!(store.unfinished("test.retained").await.unwrap(), vec![id]);
    open.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.unfinished("test.retained").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the saga never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while store.load(id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the finished saga never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.shutdown().await.unwrap();
}

/// Relay consumers of peers that stopped relaying are removed from the group
/// (after ten idle times with nothing pending).
#[tokio::test]
async fn relay_consumers_of_dead_peers_are_removed() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()).outbox_shards(1))
        .await
        .unwrap();
    let idle = Duration::from_millis(20);
    // Each dead peer relayed one entry (which makes it a consumer), then died.
    for dead in ["orders-dead-1", "orders-dead-2"] {
        store
            .append(vec![catga_core::store::OutboxRecord {
                name: "test.Charged".into(),
                payload: catga_core::Format::MsgPack
                    .encode(&Charged { cents: 1 })
                    .unwrap()
                    .into(),
                content_type: "application/msgpack".into(),
                message_id: catga_core::new_id(),
                correlation_id: catga_core::new_id(),
                causation_id: None,
                headers: Vec::new(),
            }])
            .await
            .unwrap();
        let taken = store.claim(dead, 1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(taken.len(), 1);
        store.ack(&[taken[0].id.clone()]).await.unwrap();
    }
    let consumers = || async {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("{catga:o0}:outbox")
            .arg("catga-relay")
            .query_async(&mut raw)
            .await
            .unwrap();
        let mut names: Vec<String> = info.consumers.into_iter().map(|c| c.name).collect();
        names.sort();
        names
    };
    assert_eq!(consumers().await, ["orders-dead-1", "orders-dead-2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        store.claim("orders-live", 10, idle).await.unwrap();
        if consumers()
            .await
            .iter()
            .all(|c| !c.starts_with("orders-dead"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead consumers stayed: {:?}",
            consumers().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- across NATS ------------------------------------------------------------

/// A peer serving `Charge` over NATS with Redis idempotency; the handler
/// applies its effect, then takes `hold` to answer.
async fn charging_peer(
    nats: &str,
    redis: &str,
    effects: Arc<AtomicUsize>,
    hold: Duration,
) -> catga_core::Peer {
    let store = RedisStore::connect(RedisOptions::new(redis)).await.unwrap();

    Catga::builder()
        .service("payments")
        .transport(
            catga_nats::NatsTransport::connect(catga_nats::NatsOptions::new([nats]))
                .await
                .unwrap(),
        )
        .lock_store(store.clone())
        .behavior(Idempotency::new(store).wait(Duration::from_secs(20)))
        .request_fn(move |c: Charge, _| {
            let effects = effects.clone();
            async move {
                effects.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                Ok(format!("charged {}", c.cents))
            }
        })
        .start()
        .await
        .unwrap()
}

async fn nats_client(nats: &str) -> catga_core::Mediator {
    Catga::builder()
        .service("orders")
        .transport(
            catga_nats::NatsTransport::connect(catga_nats::NatsOptions::new([nats]))
                .await
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// Case 1 over NATS: the caller's deadline passes while the remote handler
/// works; the handler finishes anyway, and the caller's retry with the same id
/// gets its stored answer. One effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_caller_that_times_out_retries_and_gets_the_one_outcome() {
    let (nats, redis) = (
        catga_test_support::NatsServer::start(),
        RedisServer::start(),
    );
    let effects = Arc::new(AtomicUsize::new(0));
    let _peer = charging_peer(
        &nats.url(),
        &redis.url(),
        effects.clone(),
        Duration::from_millis(600),
    )
    .await;
    let client = nats_client(&nats.url()).await;
    let id = catga_core::new_id();
    let charge = Charge {
        cents: 3,
        fail: false,
    };
    let first = client
        .send_with(
            charge.clone(),
            Metadata::new()
                .with_message_id(id)
                .with_timeout(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Timeout, "{first}");
    // Retried at once: it waits for the attempt in progress.
    let answer = client
        .send_with(
            charge.clone(),
            Metadata::new()
                .with_message_id(id)
                .with_timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(answer, "charged 3");
    // Retried later: the stored answer.
    let again = client
        .send_with(charge, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(again, answer);
    assert_eq!(effects.load(Ordering::SeqCst), 1, "charged once");
}

/// Case 5 over NATS: a command stamped with the fence of a term that is over
/// is refused by the receiving peer before its handler runs, and the error's
/// code survives the trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_from_a_deposed_leader_is_refused_across_nats() {
    let (nats, redis) = (
        catga_test_support::NatsServer::start(),
        RedisServer::start(),
    );
    let effects = Arc::new(AtomicUsize::new(0));
    let _peer = charging_peer(&nats.url(), &redis.url(), effects.clone(), Duration::ZERO).await;
    let locks = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let old = locks.try_acquire("billing", ttl).await.unwrap().unwrap();
    assert!(locks.release("billing", &old.token).await.unwrap());
    let new = locks.try_acquire("billing", ttl).await.unwrap().unwrap();
    let client = nats_client(&nats.url()).await;
    let fenced = |token| {
        Metadata::new().with_fence(&catga_core::Fence {
            name: "billing".into(),
            token,
        })
    };
    let charge = Charge {
        cents: 1,
        fail: false,
    };
    let refused = client
        .send_with(charge.clone(), fenced(old.fence))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");
    assert_eq!(refused.code(), Some("catga.stale_fence"));
    assert_eq!(effects.load(Ordering::SeqCst), 0);
    client.send_with(charge, fenced(new.fence)).await.unwrap();
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

/// Case 6 over NATS: a saga whose first commands find no responders (the
/// handling service is not up yet) keeps asking and completes once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_outlives_a_moment_without_responders_over_nats() {
    let (nats, redis) = (
        catga_test_support::NatsServer::start(),
        RedisServer::start(),
    );
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let saga = || {
        Saga::<u64>::new("test.pay").step(
            Step::send("charge", |c: &u64| Charge {
                cents: *c,
                fail: false,
            })
            .timeout(Duration::from_millis(500))
            .retries(5)
            .deadline(Duration::from_secs(30)),
        )
    };
    let coordinator = Catga::builder()
        .service("orders")
        .transport(
            catga_nats::NatsTransport::connect(catga_nats::NatsOptions::new([nats.url()]))
                .await
                .unwrap(),
        )
        .lock_store(store.clone())
        .saga_store(Arc::new(store.clone()))
        .saga(saga())
        .start()
        .await
        .unwrap();
    let id = saga().handle(&coordinator).unwrap().start(9).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // a few "no responders"
    let state = store.load(id).await.unwrap().unwrap();
    assert_eq!(
        state.status,
        catga_core::saga::SagaStatus::Running,
        "{state:?}"
    );
    let effects = Arc::new(AtomicUsize::new(0));
    let _peer = charging_peer(&nats.url(), &redis.url(), effects.clone(), Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = store.load(id).await.unwrap().unwrap();
        if state.status.is_finished() {
            assert_eq!(
                state.status,
                catga_core::saga::SagaStatus::Completed,
                "{state:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never finished: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    coordinator.shutdown().await.unwrap();
}

// ---- unit of work -----------------------------------------------------------

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pay {
    order: String,
    cents: i64,
}
impl catga_core::Message for Pay {
    const NAME: &'static str = "test.Pay";
    fn partition(&self) -> Option<String> {
        Some(self.order.clone())
    }
}
impl catga_core::Request for Pay {
    type Response = String;
}

/// A peer whose `Pay` handler keeps the order's state in Redis through a unit
/// of work: it reads the status, stages `paid` with the status read as its
/// condition and a ledger line, and publishes `Charged` (outbox). `gate` holds
/// the handler after it staged, until opened.
async fn paying_peer(
    redis: &str,
    runs: Arc<AtomicUsize>,
    gate: Arc<std::sync::atomic::AtomicBool>,
) -> catga_core::CatgaBuilder {
    let store = RedisStore::connect(RedisOptions::new(redis)).await.unwrap();
    let client = redis::Client::open(redis).unwrap();
    let raw = client.get_multiplexed_async_connection().await.unwrap();
    let keys = store.clone();
    Catga::builder()
        .behavior(
            Idempotency::new(store.clone())
                .lease(Duration::from_millis(300))
                .wait(Duration::from_secs(20)),
        )
        .outbox_without_relay(Arc::new(store))
        .request_fn(move |p: Pay, ctx: Context| {
            let (runs, gate, keys, mut raw) =
                (runs.clone(), gate.clone(), keys.clone(), raw.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let status_key = keys.partition_key(&p.order, &format!("order:{}", p.order));
                let ledger = keys.partition_key(&p.order, "ledger");
                let status: Option<String> = redis::cmd("GET")
                    .arg(&status_key)
                    .query_async(&mut raw)
                    .await
                    .map_err(|e| catga_core::Error::store(e.to_string()))?;
                if status.as_deref() == Some("paid") {
                    return Ok("already paid".to_owned());
                }
                ctx.stage(
                    catga_core::store::UnitOfWork::new()
                        .expect(status_key.clone(), status)
                        .set(status_key, "paid")
                        .append(ledger, format!("charge {}", p.cents)),
                )?;
                ctx.publish(Charged {
                    cents: p.cents as u64,
                })
                .await?;
                while !gate.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok("paid".to_owned())
            }
        })
}

/// Case 4: a peer that dies after its handler changed the order's state (staged)
/// but before the completion leaves nothing behind: no state, no event. The
/// retry on another peer commits state, ledger and event together, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_events_commit_together_when_a_peer_dies_mid_handler() {
    let redis = RedisServer::start();
    let url = redis.url();
    let runs = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, c, u) = (runs.clone(), closed.clone(), url.clone());
    let mut dying = Isolated::start(move || async move { paying_peer(&u, r, c).await }).await;
    let id = catga_core::new_id();
    let pay = Pay {
        order: "o-1".into(),
        cents: 1200,
    };
    {
        let (m, p) = (dying.mediator.clone(), pay.clone());
        let _ = dying_send(&dying, m, p, id);
    }
    eventually("the handler staged its writes", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    dying.kill(); // before the completion
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let healthy = paying_peer(&url, runs.clone(), open)
        .await
        .start()
        .await
        .unwrap();
    // The dead attempt's claim runs out with its lease; then the retry runs.
    let answer = healthy
        .send_with(pay.clone(), Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(answer, "paid");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let store = RedisStore::connect(RedisOptions::new(&url)).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let ledger: Vec<String> = redis::cmd("LRANGE")
        .arg(store.partition_key("o-1", "ledger"))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ledger, ["charge 1200"], "state changed once");
    assert_eq!(store.backlog().await.unwrap(), 1, "its event stored once");
    // A duplicate gets the stored answer and changes nothing.
    assert_eq!(
        healthy
            .send_with(pay, Metadata::new().with_message_id(id))
            .await
            .unwrap(),
        "paid"
    );
    assert_eq!(store.backlog().await.unwrap(), 1);
}

/// Sends on the isolated peer's own runtime, so killing the peer kills the send.
fn dying_send(
    peer: &Isolated,
    m: catga_core::Mediator,
    pay: Pay,
    id: catga_core::Uuid,
) -> Option<()> {
    peer.spawn(async move {
        let _ = m.send_with(pay, Metadata::new().with_message_id(id)).await;
    })
}

/// A unit of work whose keys are not in the completion's shard is refused with
/// a clear error (it could not commit atomically on a Redis Cluster).
#[tokio::test]
async fn a_unit_of_work_outside_the_partition_shard_is_refused() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let m = Catga::builder()
        .behavior(Idempotency::new(store))
        .request_fn(|p: Pay, ctx: Context| async move {
            ctx.stage(
                catga_core::store::UnitOfWork::new().set(format!("order:{}", p.order), "paid"),
            )?;
            Ok("paid".to_owned())
        })
        .build()
        .unwrap();
    let e = m
        .send(Pay {
            order: "o-2".into(),
            cents: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("partition_key"), "{e}");
}
