use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::behavior::{Behavior, Envelope, Next, Reply};
use catga_core::saga::{Saga, SagaState, SagaStatus, SagaStore, Step};
use catga_core::{Catga, Context, Error, ErrorKind, Message, Request, Result, Uuid};
use catga_nats::{NatsOptions, NatsTransport};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{NatsServer, RedisServer};
use serde::{Deserialize, Serialize};

use crate::common::{Isolated, eventually};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Act {
    what: String,
    fail: bool,
    sleep_ms: u64,
}
impl Message for Act {
    const NAME: &'static str = "saga.Act";
}
impl Request for Act {
    type Response = u32;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    what: String,
}
impl Message for Undo {
    const NAME: &'static str = "saga.Undo";
}
impl Request for Undo {
    type Response = ();
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    fail_at: Option<String>,
    slow_at: Option<String>,
    receipts: Vec<u32>,
}

/// Effects per (saga id, what), and arrivals of `charge` before idempotency.
#[derive(Default)]
struct World {
    effects: Mutex<HashMap<(Uuid, String), usize>>,
    charge_arrivals: AtomicUsize,
    gate_closed: AtomicBool,
    leader_thread: Mutex<Option<String>>,
}

impl World {
    fn effects_of(&self, id: Uuid) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .effects
            .lock()
            .unwrap()
            .iter()
            .filter(|((s, _), _)| *s == id)
            .map(|((_, w), n)| (w.clone(), *n))
            .collect();
        v.sort();
        v
    }
}

fn act(name: &'static str, world: Arc<World>) -> Step<Order> {
    Step::send(name, move |o: &Order| {
        if name == "charge" {
            *world.leader_thread.lock().unwrap() = std::thread::current().name().map(str::to_owned);
        }
        Act {
            what: name.to_owned(),
            fail: o.fail_at.as_deref() == Some(name),
            sleep_ms: if o.slow_at.as_deref() == Some(name) {
                30_000
            } else {
                0
            },
        }
    })
    .record(|o, r| o.receipts.push(r))
    .compensate(move |_: &Order| Undo {
        what: name.to_owned(),
    })
    .timeout(Duration::from_secs(2))
    .retries(3)
    .into()
}

fn fulfilment(world: &Arc<World>) -> Saga<Order> {
    Saga::new("test.fulfilment")
        .step(act("reserve", world.clone()))
        .step(act("charge", world.clone()))
        .step(act("ship", world.clone()))
        .max_concurrent(128)
        .polling(Duration::from_millis(50), Duration::from_secs(2))
}

/// Counts arrivals of `charge` commands before idempotency filters duplicates.
struct Arrivals(Arc<World>);
impl Behavior for Arrivals {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        if env.message::<Act>().is_some_and(|a| a.what == "charge") {
            self.0.charge_arrivals.fetch_add(1, Ordering::SeqCst);
        }
        next.run(env).await
    }
}

async fn worker(nats: &str, redis: &str, world: Arc<World>) -> catga_core::Peer {
    let store = RedisStore::connect(RedisOptions::new(redis)).await.unwrap();
    let (w1, w2) = (world.clone(), world.clone());

    Catga::builder()
        .service("stock")
        .transport(
            NatsTransport::connect(NatsOptions::new([nats]).max_in_flight(512))
                .await
                .unwrap(),
        )
        .behavior(Arrivals(world.clone()))
        .behavior(Idempotency::new(store).wait(Duration::from_secs(30)))
        .request_fn(move |a: Act, ctx: Context| {
            let w = w1.clone();
            async move {
                if a.what == "charge" {
                    while w.gate_closed.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if a.sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(a.sleep_ms)).await;
                }
                if a.fail {
                    return Err(Error::handler(
                        "test.refused",
                        format!("{} refused", a.what),
                    ));
                }
                let mut effects = w.effects.lock().unwrap();
                *effects.entry((ctx.correlation_id(), a.what)).or_default() += 1;
                Ok(effects.len() as u32)
            }
        })
        .request_fn(move |u: Undo, ctx: Context| {
            let w = w2.clone();
            async move {
                *w.effects
                    .lock()
                    .unwrap()
                    .entry((ctx.correlation_id(), format!("undo {}", u.what)))
                    .or_default() += 1;
                Ok(())
            }
        })
        .start()
        .await
        .unwrap()
}

async fn coordinator(i: usize, nats: &str, redis: &str, world: Arc<World>) -> Isolated {
    let (nats, redis) = (nats.to_owned(), redis.to_owned());
    Isolated::named(&format!("coordinator-{i}"), move || async move {
        let store = RedisStore::connect(RedisOptions::new(redis)).await.unwrap();
        Catga::builder()
            .service("orders")
            .transport(
                NatsTransport::connect(NatsOptions::new([nats]))
                    .await
                    .unwrap(),
            )
            .lock_store(store.clone())
            .saga_store(Arc::new(store))
            .saga(fulfilment(&world))
    })
    .await
}

async fn finished(store: &RedisStore, id: Uuid) -> SagaState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = store.load(id).await.unwrap().expect("the saga exists");
        if state.status.is_finished() {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga never finished: {:?}",
            state.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pairs(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    let mut v: Vec<_> = list.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_over_redis_and_nats_complete_compensate_and_time_out() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let world = Arc::new(World::default());
    let _worker = worker(&nats.url(), &redis.url(), world.clone()).await;
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(coordinator(i, &nats.url(), &redis.url(), world.clone()).await);
    }
    let saga = fulfilment(&world);
    let handle = saga.handle(&peers[0].mediator).unwrap();
    let happy = handle.start(Order::default()).await.unwrap();
    let failing = handle
        .start(Order {
            fail_at: Some("ship".into()),
            ..Order::default()
        })
        .await
        .unwrap();
    let slow = handle
        .start(Order {
            slow_at: Some("charge".into()),
            ..Order::default()
        })
        .await
        .unwrap();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();

    let state = finished(&store, happy).await;
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(
        world.effects_of(happy),
        pairs(&[("charge", 1), ("reserve", 1), ("ship", 1)])
    );

    let state = finished(&store, failing).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    let order: Vec<_> = state
        .history
        .iter()
        .filter(|h| h.what == "compensated")
        .map(|h| h.step.clone())
        .collect();
    assert_eq!(order, ["charge", "reserve"], "compensated in reverse");
    assert_eq!(
        world.effects_of(failing),
        pairs(&[
            ("charge", 1),
            ("reserve", 1),
            ("undo charge", 1),
            ("undo reserve", 1)
        ])
    );

    let state = finished(&store, slow).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.failed_step.as_deref(), Some("charge"));
    // The charge that never answered may have happened: it is undone too
    // (its undo finds nothing to undo).
    assert_eq!(
        world.effects_of(slow),
        pairs(&[("reserve", 1), ("undo charge", 1), ("undo reserve", 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_is_replaced_and_every_effect_happens_once() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let world = Arc::new(World::default());
    world.gate_closed.store(true, Ordering::SeqCst);
    let _worker = worker(&nats.url(), &redis.url(), world.clone()).await;
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(coordinator(i, &nats.url(), &redis.url(), world.clone()).await);
    }
    let id = fulfilment(&world)
        .handle(&peers[0].mediator)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    eventually("charge in progress", || {
        world.charge_arrivals.load(Ordering::SeqCst) >= 1
    })
    .await;
    let leader = world
        .leader_thread
        .lock()
        .unwrap()
        .clone()
        .expect("the leader built the command");
    let i = (0..3)
        .find(|i| leader.starts_with(&format!("coordinator-{i}")))
        .expect("leader thread name");
    peers[i].kill();
    // The next leader re-sends `charge` with the same message id.
    eventually("the re-sent charge", || {
        world.charge_arrivals.load(Ordering::SeqCst) >= 2
    })
    .await;
    world.gate_closed.store(false, Ordering::SeqCst);
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let state = finished(&store, id).await;
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(
        world.effects_of(id),
        pairs(&[("charge", 1), ("reserve", 1), ("ship", 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sagas_over_redis_and_nats_lose_and_duplicate_nothing() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let world = Arc::new(World::default());
    let _worker = worker(&nats.url(), &redis.url(), world.clone()).await;
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(coordinator(i, &nats.url(), &redis.url(), world.clone()).await);
    }
    let saga = fulfilment(&world);
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            saga.handle(&peers[n % 3].mediator)
                .unwrap()
                .start(Order::default())
                .await
                .unwrap(),
        );
    }
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(finished(&store, *id).await.status, SagaStatus::Completed);
    }
    for id in &ids {
        assert_eq!(
            world.effects_of(*id),
            pairs(&[("charge", 1), ("reserve", 1), ("ship", 1)])
        );
    }
    assert!(listed(&store).await.is_empty());
}

#[tokio::test]
async fn a_stale_coordinator_write_is_rejected_by_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let state = SagaState::from_bytes(
        &catga_core::Format::MsgPack
            .encode(&serde_json::json!({}))
            .unwrap(),
    );
    assert!(state.is_err(), "garbage is not a saga state");
    // A real state, written by coordinator with fence 7, then by a newer one (9).
    let world = Arc::new(World::default());
    let m = starter(&store, fulfilment(&world)).await;
    let id = fulfilment(&world)
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    let mut newer = store.load(id).await.unwrap().unwrap();
    newer.version += 1;
    newer.fence = 9;
    store.save(&newer).await.unwrap();
    let mut stale = newer.clone();
    stale.version += 1;
    stale.fence = 7;
    assert_eq!(
        store.save(&stale).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    let mut reread_too_old = newer.clone();
    reread_too_old.fence = 10;
    assert_eq!(
        store.save(&reread_too_old).await.unwrap_err().kind(),
        ErrorKind::Conflict,
        "the version it read is gone"
    );
    assert_eq!(listed(&store).await, vec![id]);
}

/// The backlog count behind saga admission: one pipelined round trip over
/// every shard, equal to the listing's length.
#[tokio::test]
async fn unfinished_sagas_are_counted_over_every_shard() {
    for backend in [
        crate::common::Backend::single(),
        crate::common::Backend::cluster(),
    ] {
        count_unfinished_sagas(backend.store().await).await;
    }
}

async fn count_unfinished_sagas(store: RedisStore) {
    let world = Arc::new(World::default());
    let m = starter(&store, fulfilment(&world).max_backlog(20)).await;
    assert_eq!(store.count_unfinished("test.fulfilment").await.unwrap(), 0);
    for _ in 0..20 {
        fulfilment(&world)
            .handle(&m)
            .unwrap()
            .admit()
            .await
            .unwrap();
        fulfilment(&world)
            .handle(&m)
            .unwrap()
            .start(Order::default())
            .await
            .unwrap();
    }
    assert_eq!(store.count_unfinished("test.fulfilment").await.unwrap(), 20);
    assert_eq!(listed(&store).await.len(), 20);
    let e = fulfilment(&world)
        .handle(&m)
        .unwrap()
        .admit()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("catga.saga_backlog"), "{e}");
}

/// A peer that starts sagas of `saga` in `store` while another peer holds
/// their coordinator's lock: nothing here drives them.
async fn starter(store: &RedisStore, saga: Saga<Order>) -> catga_core::Peer {
    use catga_core::store::LockStore as _;
    let locks = catga_core::store::MemoryLockStore::new();
    let coordinator = format!("catga.saga.{}", saga.name());
    locks
        .try_acquire(&coordinator, Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("the lock is free");
    Catga::builder()
        .saga_store(Arc::new(store.clone()))
        .lock_store(locks)
        .saga(saga)
        .start()
        .await
        .unwrap()
}

/// The unfinished set saga `id` of `test.fulfilment` is listed in: the store's
/// documented layout, `{catga:sagas:s<shard>}:unfinished:<name>`, the shard
/// being the FNV-1a hash of the id modulo the 8 default shards.
/// The sagas of `test.fulfilment` the store lists as unfinished.
async fn listed(store: &RedisStore) -> Vec<catga_core::Uuid> {
    store.unfinished("test.fulfilment").await.unwrap()
}

fn unfinished_key(id: catga_core::Uuid) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.to_string().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{{catga:sagas:s{}}}:unfinished:test.fulfilment", h % 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_saga_left_on_the_unfinished_list_is_dropped_and_not_listed_again() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let world = Arc::new(World::default());
    let saga = fulfilment(&world);
    let m = Catga::builder()
        .saga_store(Arc::new(store.clone()))
        .saga(fulfilment(&world))
        .start()
        .await
        .unwrap();
    let id = catga_core::new_id();
    saga.handle(&m)
        .unwrap()
        .start_with_id(id, Order::default())
        .await
        .unwrap();
    // Mark it finished as a coordinator would, then put it back on the list as
    // if that coordinator died between its save and the list update.
    let mut done = store.load(id).await.unwrap().unwrap();
    done.status = SagaStatus::Completed;
    done.version += 1;
    store.save(&done).await.unwrap();
    assert!(listed(&store).await.is_empty());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: usize = redis::cmd("SADD")
        .arg(unfinished_key(id))
        .arg(id.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    // A retried start of the finished saga does not list it again.
    saga.handle(&m)
        .unwrap()
        .start_with_id(id, Order::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !listed(&store).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the finished saga stayed listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    saga.handle(&m)
        .unwrap()
        .start_with_id(id, Order::default())
        .await
        .unwrap();
    assert!(
        listed(&store).await.is_empty(),
        "restarting a finished saga lists it again"
    );
    assert_eq!(
        store.load(id).await.unwrap().unwrap().status,
        SagaStatus::Completed
    );
    m.shutdown().await.unwrap();
}

/// A saga hash written before the hash recorded where the saga is listed
/// (no `done` / `failed` fields, as an earlier version wrote them) is saved
/// as before: finished, it leaves the list and expires; saved unfinished
/// again (an operator resumed it), it is listed again and kept.
#[tokio::test]
async fn a_saga_record_from_before_the_listing_fields_is_saved_as_before() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let id = catga_core::new_id();
    let mut state = SagaState {
        id,
        saga: "test.fulfilment".into(),
        status: SagaStatus::Running,
        step: 0,
        completed: Vec::new(),
        data: Vec::new(),
        version: 0,
        fence: 0,
        history: Vec::new(),
        error: None,
        failed_step: None,
    };
    assert!(store.create(&state).await.unwrap());
    let hash = unfinished_key(id).replace(":unfinished:test.fulfilment", &format!(":saga:{id}"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let removed: usize = redis::cmd("HDEL")
        .arg(&hash)
        .arg("done")
        .arg("failed")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(removed, 2, "the record of today has both fields");
    state.status = SagaStatus::Completed;
    state.version += 1;
    store.save(&state).await.unwrap();
    assert!(listed(&store).await.is_empty());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&hash)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 0, "a finished saga expires: {ttl}");
    let _: usize = redis::cmd("HDEL")
        .arg(&hash)
        .arg("done")
        .arg("failed")
        .query_async(&mut raw)
        .await
        .unwrap();
    state.status = SagaStatus::Compensating;
    state.version += 1;
    store.save(&state).await.unwrap();
    assert_eq!(listed(&store).await, [id]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&hash)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "an unfinished saga is kept");
}

/// `forget` drops only what is finished (or gone): a saga unfinished after
/// all (an operator resumed it after a coordinator read it finished) stays
/// listed, in the same step as the check.
#[tokio::test]
async fn forget_keeps_a_saga_that_is_unfinished_after_all() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let running = SagaState {
        id: catga_core::new_id(),
        saga: "test.fulfilment".into(),
        status: SagaStatus::Running,
        step: 0,
        completed: Vec::new(),
        data: catga_core::Format::MsgPack
            .encode(&Order::default())
            .unwrap(),
        version: 0,
        fence: 0,
        history: Vec::new(),
        error: None,
        failed_step: None,
    };
    assert!(store.create(&running).await.unwrap());
    store.forget("test.fulfilment", running.id).await.unwrap();
    assert_eq!(listed(&store).await, [running.id], "unfinished: kept");
    // Finished, yet listed again (a writer that died between its save and
    // the list update): dropped.
    let mut done = running.clone();
    done.status = SagaStatus::Completed;
    done.version = 1;
    store.save(&done).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: usize = redis::cmd("SADD")
        .arg(unfinished_key(running.id))
        .arg(running.id.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(listed(&store).await, [running.id]);
    store.forget("test.fulfilment", running.id).await.unwrap();
    assert!(listed(&store).await.is_empty(), "finished: dropped");
    // Written before the listing fields existed (no `done`): dropped, as
    // every `forget` did then.
    let mut old = running.clone();
    old.id = catga_core::new_id();
    assert!(store.create(&old).await.unwrap());
    let hash = {
        let set = unfinished_key(old.id);
        let tag = &set[..set.find('}').unwrap() + 1];
        format!("{tag}:saga:{}", old.id)
    };
    let removed: usize = redis::cmd("HDEL")
        .arg(&hash)
        .arg("done")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(removed, 1, "`{hash}` had its field");
    store.forget("test.fulfilment", old.id).await.unwrap();
    assert!(listed(&store).await.is_empty(), "older record: dropped");
    // Never stored at all: dropped.
    let ghost = catga_core::new_id();
    let _: usize = redis::cmd("SADD")
        .arg(unfinished_key(ghost))
        .arg(ghost.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    store.forget("test.fulfilment", ghost).await.unwrap();
    assert!(listed(&store).await.is_empty(), "gone: dropped");
}
