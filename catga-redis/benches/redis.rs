//! Redis-backed operations: Catga against the bare clients, same run.
//!
//! Run with `cargo bench -p catga-redis --bench redis` (starts its own
//! nats-server and redis-server on loopback; prints one JSON line per case).
//!
//! - `idempotent_send`: a remote command through NATS with the idempotency
//!   behavior on Redis (claim `SET NX GET` + completion script), against a bare
//!   async-nats request/reply whose responder does one `SET NX PX` and one
//!   `SET PX` through the redis crate. Both responders handle requests
//!   concurrently; 32 in flight.
//! - `lock`: `try_acquire` + `release` (`SET NX PX` and, when it succeeds, the
//!   fencing `INCR`, in one script; compare-and-delete script) against a bare
//!   `SET NX PX` + `DEL`, and against the same safe operations written by hand.
//!
//! Each case runs `ROUNDS` times alternating with the bare client; medians are
//! printed.
//!
//! `CATGA_BENCH_CASE=idempotent_send|lock` runs one case only (for profiling).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::store::LockStore;
use catga_core::{Catga, Message, Request};
use catga_nats::{NatsOptions, NatsTransport};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::bench::{drive, median, report, wants};
use catga_test_support::{NatsServer, RedisServer};
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

const IN_FLIGHT: usize = 32;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
/// Each case runs this many times, alternating with the bare client; medians
/// are printed. Five, not three: with Redis, NATS and the bench sharing two
/// cores, single rounds of the same binary differ by up to 20 %.
const ROUNDS: usize = 5;

#[derive(Clone, Serialize, Deserialize)]
struct Echo {
    body: String,
}
impl Message for Echo {
    const NAME: &'static str = "bench.Echo";
}
impl Request for Echo {
    type Response = usize;
}

fn body() -> String {
    "x".repeat(56)
}

async fn bare_idempotent_responder(nats: &str, redis_url: &str) {
    let client = async_nats::connect(nats).await.unwrap();
    let redis = redis::Client::open(redis_url).unwrap();
    let conn = redis::aio::ConnectionManager::new(redis).await.unwrap();
    let mut sub = client
        .queue_subscribe("bare.req.Echo", "bare".into())
        .await
        .unwrap();
    let seq = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (client, mut conn, seq) = (client.clone(), conn.clone(), seq.clone());
            tokio::spawn(async move {
                let key = format!("bare:idem:{}", seq.fetch_add(1, Ordering::Relaxed));
                let claimed: bool = conn
                    .set_options(
                        &key,
                        "p:token",
                        redis::SetOptions::default()
                            .conditional_set(redis::ExistenceCheck::NX)
                            .with_expiration(redis::SetExpiry::PX(30_000)),
                    )
                    .await
                    .unwrap();
                assert!(claimed);
                let echo: Echo = rmp_serde::from_slice(&msg.payload).unwrap();
                let reply = rmp_serde::to_vec_named(&echo.body.len()).unwrap();
                let _: () = conn
                    .set_options(
                        &key,
                        &reply[..],
                        redis::SetOptions::default()
                            .with_expiration(redis::SetExpiry::PX(86_400_000)),
                    )
                    .await
                    .unwrap();
                if let Some(to) = msg.reply {
                    client.publish(to, reply.into()).await.unwrap();
                }
            });
        }
    });
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nats = NatsServer::start();
        let redis_server = RedisServer::start();
        let (nats_url, redis_url) = (nats.url(), redis_server.url());

        let store = RedisStore::connect(RedisOptions::new(&redis_url))
            .await
            .unwrap();

        // Idempotent remote command.
        if wants("idempotent_send") {
            bare_idempotent_responder(&nats_url, &redis_url).await;
            let bare_client = async_nats::connect(&nats_url).await.unwrap();
            let peer = Catga::builder()
                .service("bench")
                .transport(
                    NatsTransport::connect(NatsOptions::new([nats_url.as_str()]))
                        .await
                        .unwrap(),
                )
                .behavior(Idempotency::new(store.clone()))
                .request_fn(|e: Echo, _| async move { Ok(e.body.len()) })
                .start()
                .await
                .unwrap();
            let client = Catga::builder()
                .service("bench-client")
                .transport(
                    NatsTransport::connect(NatsOptions::new([nats_url.as_str()]))
                        .await
                        .unwrap(),
                )
                .build()
                .unwrap();
            let (mut bare, mut catga) = (vec![], vec![]);
            for _ in 0..ROUNDS {
                let c = bare_client.clone();
                bare.push(
                    drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
                        let c = c.clone();
                        async move {
                            // Built and encoded per request, as Catga's caller does.
                            let p: bytes::Bytes = rmp_serde::to_vec_named(&Echo { body: body() })
                                .unwrap()
                                .into();
                            let r = c.request("bare.req.Echo", p).await.unwrap();
                            let n: usize = rmp_serde::from_slice(&r.payload).unwrap();
                            assert_eq!(n, 56);
                        }
                    })
                    .await,
                );
                let c = client.clone();
                catga.push(
                    drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
                        let c = c.clone();
                        async move {
                            assert_eq!(c.send(Echo { body: body() }).await.unwrap(), 56);
                        }
                    })
                    .await,
                );
            }
            report(
                "idempotent_send",
                IN_FLIGHT,
                &median(&catga),
                &median(&bare),
            );
            peer.shutdown().await.unwrap();
        }
        if !wants("lock") {
            return;
        }

        // Lock acquire + release.
        let raw =
            redis::aio::ConnectionManager::new(redis::Client::open(redis_url.as_str()).unwrap())
                .await
                .unwrap();
        let seq = Arc::new(AtomicU64::new(0));
        let release = Arc::new(redis::Script::new(include_str!("../lua/lock_release.lua")));
        let acquire = Arc::new(redis::Script::new(include_str!("../lua/lock_acquire.lua")));
        let (mut bare, mut bare_safe, mut catga) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            // The same safe operations by hand: the acquire script (SET NX,
            // and INCR of the fence when it succeeds), compare-and-delete script.
            let (conn, s) = (raw.clone(), seq.clone());
            let (acquire, release) = (acquire.clone(), release.clone());
            bare_safe.push(
                drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
                    let (mut conn, n, acquire, release) = (
                        conn.clone(),
                        s.fetch_add(1, Ordering::Relaxed),
                        acquire.clone(),
                        release.clone(),
                    );
                    async move {
                        let (key, fence) =
                            (format!("{{safe:{n}}}:lock"), format!("{{safe:{n}}}:fence"));
                        let token = format!("{:032x}", fastrand::u128(..));
                        let fence: Option<u64> = acquire
                            .key(&key)
                            .key(&fence)
                            .arg(&token)
                            .arg(30_000)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(fence.is_some());
                        let released: i64 = release
                            .key(&key)
                            .arg(&token)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(released, 1);
                    }
                })
                .await,
            );
            let (raw, s) = (raw.clone(), seq.clone());
            bare.push(
                drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
                    let (mut conn, key) = (
                        raw.clone(),
                        format!("bare:lock:{}", s.fetch_add(1, Ordering::Relaxed)),
                    );
                    async move {
                        let ok: bool = conn
                            .set_options(
                                &key,
                                "token",
                                redis::SetOptions::default()
                                    .conditional_set(redis::ExistenceCheck::NX)
                                    .with_expiration(redis::SetExpiry::PX(30_000)),
                            )
                            .await
                            .unwrap();
                        assert!(ok);
                        let _: usize = conn.del(&key).await.unwrap();
                    }
                })
                .await,
            );
            let (store, s) = (store.clone(), seq.clone());
            catga.push(
                drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
                    let (store, name) = (
                        store.clone(),
                        format!("bench:{}", s.fetch_add(1, Ordering::Relaxed)),
                    );
                    async move {
                        let lease = store
                            .try_acquire(&name, Duration::from_secs(30))
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(store.release(&name, &lease.token).await.unwrap());
                    }
                })
                .await,
            );
        }
        report(
            "lock_acquire_release",
            IN_FLIGHT,
            &median(&catga),
            &median(&bare),
        );
        report(
            "lock_vs_bare_with_the_same_safe_operations",
            IN_FLIGHT,
            &median(&catga),
            &median(&bare_safe),
        );
    });
}
