//! The `catga` binary against real servers: a poison durable command ends in
//! dead letters, and `catga dlq replay` delivers it once the handler is
//! fixed; an outbox dead letter is listed, replayed into the outbox and
//! purged.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::store::{OutboxRecord, OutboxStore};
use catga_core::{Catga, Error, Message, Request};
use catga_nats::{JetStreamOptions, NatsOptions, NatsTransport};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{NatsCluster, RedisServer};
use serde::{Deserialize, Serialize};

/// Runs `catga` with `args` on a blocking thread (it has its own runtime).
async fn catga(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_catga"))
            .args(&args)
            .env_remove("CATGA_NATS_URL")
            .env_remove("CATGA_REDIS_URL")
            .output()
            .expect("the catga binary runs")
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(30), check).await;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ship {
    order: u64,
}
impl Message for Ship {
    const NAME: &'static str = "cli.Ship";
}
impl Request for Ship {
    type Response = ();
    const DURABLE: bool = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_command_is_replayed_from_dead_letters_once_its_handler_is_fixed() {
    // On the 3-node cluster, as the services run.
    let cluster = NatsCluster::start();
    let url = cluster.urls().join(",");
    let broken = Arc::new(AtomicBool::new(true));
    let shipped = Arc::new(AtomicUsize::new(0));
    let (b, s) = (broken.clone(), shipped.clone());
    let nats = NatsTransport::connect(NatsOptions::new(cluster.urls()).jetstream(
        JetStreamOptions {
            max_deliveries: 2,
            backoff: Duration::from_millis(20),
            ..JetStreamOptions::default()
        },
    ))
    .await
    .unwrap();
    let peer = Catga::builder()
        .service("shipping")
        .transport(nats)
        .request_fn(move |_: Ship, _| {
            let (b, s) = (b.clone(), s.clone());
            async move {
                if b.load(Ordering::SeqCst) {
                    return Err(Error::validation("no such warehouse"));
                }
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    peer.send_durable(Ship { order: 7 }).await.unwrap();

    // Dead-lettered: listed with its name and why.
    let mut listed = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !listed.contains("cli.Ship") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = catga(&["--nats", &url, "dlq", "list"]).await;
        assert!(out.status.success(), "{out:?}");
        listed = stdout(&out);
    }
    assert!(listed.contains("no such warehouse"), "{listed}");
    let id = listed.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with("nats:"), "{listed}");
    let shown = catga(&["--nats", &url, "dlq", "show", &id]).await;
    assert!(
        stdout(&shown).contains("from: catga.cmd.cli.Ship"),
        "{shown:?}"
    );
    assert_eq!(shipped.load(Ordering::SeqCst), 0);

    // Fixed, replayed: handled once, and gone from the dead letters.
    broken.store(false, Ordering::SeqCst);
    let replay = catga(&["--nats", &url, "dlq", "replay", &id]).await;
    assert!(replay.status.success(), "{replay:?}");
    eventually("the replayed command", || {
        shipped.load(Ordering::SeqCst) == 1
    })
    .await;
    let after = catga(&["--nats", &url, "dlq", "list"]).await;
    assert_eq!(stdout(&after), "", "nothing left");
    // A bad id is an error, not a panic.
    let bad = catga(&["--nats", &url, "dlq", "replay", "nats:999999"]).await;
    assert!(!bad.status.success());
    peer.shutdown().await.unwrap();
    assert_eq!(shipped.load(Ordering::SeqCst), 1, "once");
}

fn record(n: u32) -> OutboxRecord {
    OutboxRecord {
        name: "cli.Happened".into(),
        payload: vec![0x90 + (n as u8 % 10)].into(),
        content_type: "application/msgpack".into(),
        message_id: catga_core::new_id(),
        correlation_id: catga_core::new_id(),
        causation_id: None,
        headers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_dead_letters_are_listed_replayed_and_purged() {
    let redis = RedisServer::start();
    let url = redis.url();
    let store = RedisStore::connect(RedisOptions::new(url.clone()).outbox_shards(1))
        .await
        .unwrap();
    store.append(vec![record(1), record(2)]).await.unwrap();
    let taken = store
        .claim("cli-test", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    for entry in &taken {
        store
            .dead_letter(entry, "the broker refused it")
            .await
            .unwrap();
    }
    assert_eq!(store.backlog().await.unwrap(), 0);

    let r = ["--redis", &url, "--outbox-shards", "1"];
    let list = catga(&[&r[..], &["dlq", "list"]].concat()).await;
    assert!(list.status.success(), "{list:?}");
    let text = stdout(&list);
    let ids: Vec<&str> = text.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(ids.len(), 2, "{text}");
    assert!(text.contains("cli.Happened") && text.contains("the broker refused it"));

    let replay = catga(&[&r[..], &["dlq", "replay", ids[0]]].concat()).await;
    assert!(replay.status.success(), "{replay:?}");
    assert_eq!(store.backlog().await.unwrap(), 1, "back in the outbox");
    assert_eq!(store.dead_letter_count().await.unwrap(), 1);
    let status = catga(&[&r[..], &["outbox"]].concat()).await;
    let status = stdout(&status);
    assert!(
        status.contains("backlog: 1") && status.contains("dead letters: 1"),
        "{status}"
    );
    assert!(
        status.contains("cli-test"),
        "the relay consumer is listed: {status}"
    );

    let purge = catga(&[&r[..], &["dlq", "purge", "--all"]].concat()).await;
    assert!(purge.status.success(), "{purge:?}");
    assert_eq!(store.dead_letter_count().await.unwrap(), 0);
    // The replayed entry is relayable as it was stored.
    let again = store
        .claim("cli-test", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.name, "cli.Happened");
}

#[tokio::test]
async fn no_backend_is_a_clear_error() {
    let out = catga(&["dlq", "list"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--nats URL"),
        "{out:?}"
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reserve;
impl Message for Reserve {
    const NAME: &'static str = "cli.Reserve";
}
impl Request for Reserve {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Release;
impl Message for Release {
    const NAME: &'static str = "cli.Release";
}
impl Request for Release {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge;
impl Message for Charge {
    const NAME: &'static str = "cli.Charge";
}
impl Request for Charge {
    type Response = ();
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order;

/// A saga whose compensation kept failing ends Failed, is listed by
/// `catga saga failed`, and `catga saga compensate` resumes it once the
/// cause is fixed: the stock is released once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_is_listed_and_its_compensation_resumed() {
    use catga_core::saga::{Saga, SagaHandle, SagaStatus, SagaStore, Step};
    let redis = RedisServer::start();
    let url = redis.url();
    let store = RedisStore::connect(RedisOptions::new(url.clone()))
        .await
        .unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let released = Arc::new(AtomicUsize::new(0));
    let (b, r) = (broken.clone(), released.clone());
    let saga = Saga::<Order>::new("cli.order")
        .step(
            Step::send("reserve", |_: &Order| Reserve)
                .compensate(|_: &Order| Release)
                .timeout(Duration::from_secs(2)),
        )
        .step(Step::send("charge", |_: &Order| Charge).timeout(Duration::from_secs(2)))
        .compensation_retries(2, Duration::from_millis(10))
        .polling(Duration::from_millis(50), Duration::from_secs(5));
    let peer = Catga::builder()
        .saga_store(store.clone())
        .lock_store(store.clone())
        .saga(saga)
        .request_fn(|_: Reserve, _| async { Ok(()) })
        .request_fn(|_: Charge, _| async { Err(Error::validation("card declined")) })
        .request_fn(move |_: Release, _| {
            let (b, r) = (b.clone(), r.clone());
            async move {
                if b.load(Ordering::SeqCst) {
                    return Err(Error::validation("the warehouse is offline"));
                }
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let id = SagaHandle::<Order>::of(&peer)
        .unwrap()
        .start(Order)
        .await
        .unwrap();
    let status = |store: RedisStore| async move { store.load(id).await.unwrap().map(|s| s.status) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status(store.clone()).await != Some(SagaStatus::Failed) {
        assert!(tokio::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = catga(&["--redis", &url, "saga", "failed", "cli.order"]).await;
    assert!(failed.status.success(), "{failed:?}");
    assert!(stdout(&failed).contains(&id.to_string()), "{failed:?}");
    assert!(
        stdout(&failed).contains("the warehouse is offline"),
        "{failed:?}"
    );

    broken.store(false, Ordering::SeqCst);
    let resumed = catga(&["--redis", &url, "saga", "compensate", &id.to_string()]).await;
    assert!(resumed.status.success(), "{resumed:?}");
    while status(store.clone()).await != Some(SagaStatus::Compensated) {
        assert!(tokio::time::Instant::now() < deadline, "never compensated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(released.load(Ordering::SeqCst), 1, "released once");
    assert!(store.failed("cli.order").await.unwrap().is_empty());
    let shown = catga(&["--redis", &url, "saga", "show", &id.to_string()]).await;
    assert!(stdout(&shown).contains("compensation_resumed"), "{shown:?}");
    // Resuming what is not failed is refused.
    let again = catga(&["--redis", &url, "saga", "compensate", &id.to_string()]).await;
    assert!(!again.status.success());
    peer.shutdown().await.unwrap();
}
