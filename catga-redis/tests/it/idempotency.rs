use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::store::{Claim, Completed, Completion, IdempotencyStore};
use catga_core::{Catga, Error, ErrorKind, Mediator, Metadata};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::RedisServer;

use crate::common::*;

fn charging(store: RedisStore, runs: Arc<AtomicUsize>, retention: Duration) -> Mediator {
    Catga::builder()
        .behavior(
            Idempotency::new(store)
                .retention(retention)
                .wait(Duration::from_secs(20)),
        )
        .request_fn(move |c: Charge, _| {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if c.fail {
                    return Err(
                        Error::handler("test.declined", "card declined").with_retryable(true)
                    );
                }
                Ok(format!("receipt-{}-run-{n}", c.cents))
            }
        })
        .build()
        .unwrap()
}

async fn duplicates_run_once(backend: Backend) {
    let runs = Arc::new(AtomicUsize::new(0));
    // Ten peers, each with its own connection, get the same message id.
    let mut peers = Vec::new();
    for _ in 0..10 {
        peers.push(charging(
            backend.store().await,
            runs.clone(),
            Duration::from_secs(60),
        ));
    }
    let id = catga_core::new_id();
    let mut tasks = Vec::new();
    for m in &peers {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.send_with(
                Charge {
                    cents: 500,
                    fail: false,
                },
                Metadata::new().with_message_id(id),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "{}: handler ran more than once",
        backend.name()
    );
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    // A completed duplicate is served from the store.
    let again = peers[3]
        .send_with(
            Charge {
                cents: 500,
                fail: false,
            },
            Metadata::new().with_message_id(id),
        )
        .await
        .unwrap();
    assert_eq!(again, answers[0]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_duplicates_run_the_handler_once_single_node() {
    duplicates_run_once(Backend::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_duplicates_run_the_handler_once_cluster() {
    duplicates_run_once(Backend::cluster()).await;
}

async fn failures_and_expiry_run_again(backend: Backend) {
    let runs = Arc::new(AtomicUsize::new(0));
    let m = charging(
        backend.store().await,
        runs.clone(),
        Duration::from_millis(300),
    );
    let id = catga_core::new_id();
    let meta = || Metadata::new().with_message_id(id);
    let err = m
        .send_with(
            Charge {
                cents: 1,
                fail: true,
            },
            meta(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("test.declined"));
    let ok = m
        .send_with(
            Charge {
                cents: 1,
                fail: false,
            },
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(ok, "receipt-1-run-2", "the failure was not stored");
    assert_eq!(
        m.send_with(
            Charge {
                cents: 1,
                fail: false
            },
            meta()
        )
        .await
        .unwrap(),
        ok
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = m
        .send_with(
            Charge {
                cents: 1,
                fail: false,
            },
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(
        after, "receipt-1-run-3",
        "expired retention runs the handler again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_runs_again_and_retention_expiry_runs_again_single_node() {
    failures_and_expiry_run_again(Backend::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_runs_again_and_retention_expiry_runs_again_cluster() {
    failures_and_expiry_run_again(Backend::cluster()).await;
}

#[tokio::test]
async fn an_expired_lease_cannot_overwrite_a_newer_attempt() {
    let backend = Backend::single();
    let s = backend.store().await;
    let Claim::Acquired { token: old } = s.claim("k", Duration::from_millis(100)).await.unwrap()
    else {
        panic!("first claim")
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Claim::Acquired { token: new } = s.claim("k", Duration::from_secs(10)).await.unwrap()
    else {
        panic!("an expired lease frees the key")
    };
    assert!(
        s.complete(
            "k",
            &old,
            Completion::new("stale".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            != Completed::Stored
    );
    assert!(
        s.complete(
            "k",
            &new,
            Completion::new("fresh".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            == Completed::Stored
    );
    assert_eq!(
        s.claim("k", Duration::from_secs(1)).await.unwrap(),
        Claim::Completed("fresh".into())
    );
}

#[tokio::test]
async fn a_corrupt_value_is_an_error_naming_the_key() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(server.url()).outbox_shards(1))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("{catga:o0}:idem:orders/h:1")
        .arg("garbage")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = store
        .claim("orders/h:1", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(
        err.to_string().contains("{catga:o0}:idem:orders/h:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_a_retryable_store_error_and_it_reconnects() {
    let mut server = RedisServer::start();
    let store =
        RedisStore::connect(RedisOptions::new(server.url()).timeout(Duration::from_millis(500)))
            .await
            .unwrap();
    assert!(matches!(
        store.claim("a", Duration::from_secs(5)).await.unwrap(),
        Claim::Acquired { .. }
    ));
    server.kill();
    let err = store.claim("b", Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(err.is_retryable());
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.claim("c", Duration::from_secs(5)).await {
            Ok(Claim::Acquired { .. }) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never reconnected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A server that lost its scripts (restarted, `SCRIPT FLUSH`) gets them again:
/// the completion still stores.
#[tokio::test]
async fn a_completion_reloads_its_script_after_a_flush() {
    let backend = Backend::single();
    let s = backend.store().await;
    let Backend::Single(server) = &backend else {
        unreachable!("a single node")
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    for round in 0..2 {
        let key = format!("flushed-{round}");
        let Claim::Acquired { token } = s.claim(&key, Duration::from_secs(10)).await.unwrap()
        else {
            panic!("first claim")
        };
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut raw)
            .await
            .unwrap();
        let done = s
            .complete(
                &key,
                &token,
                Completion::new("r".into(), Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(done, Completed::Stored);
    }
}

/// A store over a connection the application already has keeps the same
/// rules: a duplicate gets the stored answer.
#[tokio::test]
async fn a_store_wraps_a_connection_the_application_already_has() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let store = RedisStore::from_connection_manager(
        connection,
        &RedisOptions::new(redis.url()).prefix("own"),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let m = charging(store, runs.clone(), Duration::from_secs(60));
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    let charge = Charge {
        cents: 9,
        fail: false,
    };
    let first = m.send_with(charge.clone(), meta.clone()).await.unwrap();
    let again = m.send_with(charge, meta).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A server that requires a password: the URL's credentials are used; a
/// missing or wrong one is a clear error, not a hang or a panic.
#[tokio::test]
async fn a_password_protected_redis_is_used_with_the_urls_credentials() {
    let redis = RedisServer::start_with_password("s3cret");
    let store = RedisStore::connect(RedisOptions::new(redis.url_with_password("s3cret")))
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let m = charging(store, runs.clone(), Duration::from_secs(60));
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    let charge = Charge {
        cents: 3,
        fail: false,
    };
    m.send_with(charge.clone(), meta.clone()).await.unwrap();
    m.send_with(charge, meta).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    for url in [redis.url(), redis.url_with_password("wrong")] {
        let failed = match RedisStore::connect(RedisOptions::new(url.clone())).await {
            Err(e) => e,
            Ok(store) => {
                let m = charging(store, runs.clone(), Duration::from_secs(60));
                m.send(Charge {
                    cents: 1,
                    fail: false,
                })
                .await
                .unwrap_err()
            }
        };
        let text = failed.to_string().to_lowercase();
        assert!(
            text.contains("auth") || text.contains("password"),
            "{url}: {failed}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "nothing ran unauthenticated"
    );
}

/// Completes a fresh claim of `key` with `work` and one event.
async fn complete_with(
    s: &RedisStore,
    key: &str,
    work: catga_core::store::UnitOfWork,
) -> Completed {
    let Claim::Acquired { token } = IdempotencyStore::claim(s, key, Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    let event = catga_core::store::OutboxRecord {
        name: "test.Charged".into(),
        payload: vec![1].into(),
        content_type: "application/msgpack".into(),
        message_id: catga_core::new_id(),
        correlation_id: catga_core::new_id(),
        causation_id: None,
        headers: Vec::new(),
    };
    let done = Completion::new("resp".into(), Duration::from_secs(60))
        .events(vec![event])
        .work(work);
    s.complete(key, &token, done).await.unwrap()
}

/// A write that does not fit what its key holds (an increment of text, a
/// hash write to a list) fails the completion with nothing written. Redis
/// keeps what a script wrote before an error: without the script's check
/// before its first write, the ledger line before the failing increment
/// would stay, and be written again by every retry.
#[tokio::test]
async fn a_write_that_does_not_fit_its_key_writes_nothing() {
    use catga_core::store::{OutboxStore, UnitOfWork};

    let server = RedisServer::start();
    let s = RedisStore::connect(RedisOptions::new(server.url()).outbox_shards(1))
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let (acct, orders) = (
        s.partition_key("o-1", "acct"),
        s.partition_key("o-1", "orders"),
    );
    let (ledger, count) = (
        s.partition_key("o-1", "ledger"),
        s.partition_key("o-1", "count"),
    );
    let _: () = redis::cmd("SET")
        .arg(&acct)
        .arg("ten")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&orders)
        .arg("o1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let (padded, totals) = (
        s.partition_key("o-1", "padded"),
        s.partition_key("o-1", "totals"),
    );
    let _: () = redis::cmd("SET")
        .arg(&padded)
        .arg("007")
        .query_async(&mut raw)
        .await
        .unwrap();

    let unfit = UnitOfWork::new()
        .append(ledger.clone(), "x")
        .increment(acct.clone(), 5);
    assert_eq!(
        complete_with(&s, "{o-1}k1", unfit).await,
        Completed::WrongType { key: acct.clone() }
    );
    // The first write itself unfit (made with pcall, nothing before it).
    let unfit = UnitOfWork::new().hash_set(orders.clone(), "f", "v");
    assert_eq!(
        complete_with(&s, "{o-1}k2", unfit).await,
        Completed::WrongType {
            key: orders.clone()
        }
    );
    let unfit = UnitOfWork::new()
        .increment(count.clone(), 1)
        .hash_set(orders.clone(), "f", "v");
    assert_eq!(
        complete_with(&s, "{o-1}k3", unfit).await,
        Completed::WrongType {
            key: orders.clone()
        }
    );
    // Unfit as the writes before it in the same unit leave the key, or as
    // Redis reads a number ("007" is not one).
    let cases = [
        (
            UnitOfWork::new()
                .append(ledger.clone(), "x")
                .set(count.clone(), "abc")
                .increment(count.clone(), 1),
            count.clone(),
        ),
        (
            UnitOfWork::new()
                .append(ledger.clone(), "x")
                .hash_set(totals.clone(), "n", "x")
                .hash_increment(totals.clone(), "n", 1),
            totals.clone(),
        ),
        (
            UnitOfWork::new()
                .append(ledger.clone(), "x")
                .increment(padded.clone(), 1),
            padded.clone(),
        ),
    ];
    for (n, (unfit, key)) in cases.into_iter().enumerate() {
        assert_eq!(
            complete_with(&s, &format!("{{o-1}}case{n}"), unfit).await,
            Completed::WrongType { key }
        );
    }
    let lines: i64 = redis::cmd("LLEN")
        .arg(&ledger)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(lines, 0, "no write before the unfit one");
    let kept: String = redis::cmd("GET")
        .arg(&padded)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kept, "007");
    let counted: Option<String> = redis::cmd("GET")
        .arg(&count)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(counted, None);
    assert_eq!(s.backlog().await.unwrap(), 0, "no event");
    assert_eq!(
        IdempotencyStore::claim(&s, "{o-1}k1", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::InProgress,
        "nothing stored; the claim is still held"
    );
    // Writes that fit are applied.
    let fit = UnitOfWork::new()
        .increment(count.clone(), 2)
        .append(ledger.clone(), "y");
    assert_eq!(complete_with(&s, "{o-1}k4", fit).await, Completed::Stored);
    // An error that is not about the value (out of memory here) stays the
    // retryable store error it is, not a wrong type that would give up.
    let Claim::Acquired { token } = IdempotencyStore::claim(&s, "{o-1}k5", Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let full = s
        .complete(
            "{o-1}k5",
            &token,
            Completion::new("resp".into(), Duration::from_secs(60))
                .work(UnitOfWork::new().append(ledger.clone(), "z")),
        )
        .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut raw)
        .await
        .unwrap();
    let e = full.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store, "{e}");
    assert!(e.is_retryable(), "{e}");
    let counted: Option<String> = redis::cmd("GET")
        .arg(&count)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(counted.as_deref(), Some("2"));
    assert_eq!(s.backlog().await.unwrap(), 1);
}
