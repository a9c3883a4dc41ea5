//! Remote dispatch over NATS: Catga against the bare async-nats client, same run.
//!
//! Run with `cargo bench -p catga-nats --bench remote` (starts its own
//! nats-server on loopback; prints one JSON line per comparison).
//!
//! - `send`: request/reply with a 64-byte payload, `IN_FLIGHT` requests in flight
//!   from one connection to one responder connection, then one at a time (for
//!   latency). The bare side decodes the request and encodes the response with
//!   rmp-serde too, as a hand-written service would, so the difference is
//!   Catga's own cost. Each case runs `ROUNDS` times, alternating with the bare
//!   client; medians are printed.
//! - `publish`: fire-and-forget event publishes from one task, a flush after
//!   every 100.
//!
//! - `cpu`: ONE message type whose handler burns 200 µs of CPU, served by a
//!   peer on a runtime of 1 thread, then of 2: requests per second of each
//!   and their ratio (handlers of one type run on every core).
//!
//! `CATGA_BENCH_CASE=send|publish|cpu` runs one case only (for profiling).

use std::time::{Duration, Instant};

use async_nats::Client;
use catga_core::{Catga, Event, Mediator, Message, Request};
use catga_nats::{NatsOptions, NatsTransport};
use catga_test_support::NatsServer;
use catga_test_support::bench::{self, Stats, wants};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const IN_FLIGHT: usize = 32;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
/// Each case runs this many times, alternating with the bare client; the median
/// is reported.
const ROUNDS: usize = 5;

/// `CATGA_BENCH_SIDE=catga|bare` runs one side only (for profiling; the
/// comparison lines then show zeros for the other side).
fn side(which: &str) -> bool {
    std::env::var("CATGA_BENCH_SIDE").map_or(true, |c| c == which)
}

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

#[derive(Clone, Serialize, Deserialize)]
struct Tick {
    body: String,
}
impl Message for Tick {
    const NAME: &'static str = "bench.Tick";
}
impl Event for Tick {}

#[derive(Clone, Serialize, Deserialize)]
struct Burn {
    micros: u64,
}
impl Message for Burn {
    const NAME: &'static str = "bench.Burn";
}
impl Request for Burn {
    type Response = u64;
}

fn body() -> String {
    "x".repeat(56) // 64 bytes of MessagePack with the map header and field name
}

/// Bare request/reply, optionally with the headers Catga sends. Like a
/// hand-written client, it builds and encodes each request.
async fn bare_send(client: &Client, in_flight: usize, headers: bool) -> Stats {
    let c = client.clone();
    bench::drive(in_flight, WARM_UP, MEASURE, move || {
        let c = c.clone();
        async move {
            let p: bytes::Bytes = rmp_serde::to_vec_named(&Echo { body: body() })
                .unwrap()
                .into();
            let r = if headers {
                c.request_with_headers("bareh.req.Echo", catga_like_headers(), p)
                    .await
            } else {
                c.request("bare.req.Echo", p).await
            };
            let n: usize = rmp_serde::from_slice(&r.unwrap().payload).unwrap();
            assert_eq!(n, 56);
        }
    })
    .await
}

/// A hand-written responder; with `headers`, it reads the request's headers as
/// Catga does (a successful reply carries none).
async fn bare_responder(client: Client, subject: &'static str, headers: bool) {
    let mut sub = client
        .queue_subscribe(subject, "bare".into())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if headers {
                let h = msg.headers.as_ref().unwrap();
                let id: uuid::Uuid = h.get("Catga-Message-Id").unwrap().as_str().parse().unwrap();
                assert!(!id.is_nil());
                let deadline: u64 = h.get("Catga-Deadline").unwrap().as_str().parse().unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                assert!(deadline > now.as_millis() as u64);
            }
            let echo: Echo = rmp_serde::from_slice(&msg.payload).unwrap();
            let reply = rmp_serde::to_vec_named(&echo.body.len()).unwrap();
            if let Some(to) = msg.reply {
                client.publish(to, reply.into()).await.unwrap();
            }
        }
    });
}

/// The headers Catga sends with an event when the caller has no trace context
/// of its own: the message id.
fn catga_like_event_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        "Catga-Message-Id",
        catga_core::new_id().to_string().as_str(),
    );
    h
}

/// The headers Catga sends with a request: an event's, and the absolute
/// deadline.
fn catga_like_headers() -> async_nats::HeaderMap {
    let mut h = catga_like_event_headers();
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(30);
    h.insert("Catga-Deadline", deadline.as_millis().to_string().as_str());
    h
}

/// Requests per second of one message type whose handler burns 200 µs of
/// CPU, served by a peer on a runtime of its own with `workers` threads.
async fn cpu_bound(url: &str, client: &Mediator, workers: usize) -> f64 {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let url = url.to_owned();
    let peer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let nats = NatsTransport::connect(NatsOptions::new([url.as_str()]))
                .await
                .unwrap();
            let m = Catga::builder()
                .service("bench-cpu")
                .transport(nats)
                .request_fn(|e: Burn, _| {
                    let end = Instant::now() + Duration::from_micros(e.micros);
                    let mut spins = 0u64;
                    while Instant::now() < end {
                        spins = spins.wrapping_add(1);
                    }
                    async move { Ok(spins) }
                })
                .start()
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
            m.shutdown().await.unwrap();
        });
    });
    ready_rx.await.unwrap();
    let c = client.clone();
    let stats = bench::drive(IN_FLIGHT, WARM_UP, MEASURE, move || {
        let c = c.clone();
        async move {
            c.send(Burn { micros: 200 }).await.unwrap();
        }
    })
    .await;
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    stats.per_sec
}

async fn catga_peer(url: &str) -> catga_core::Peer {
    let nats = NatsTransport::connect(NatsOptions::new([url]))
        .await
        .unwrap();

    Catga::builder()
        .service("bench")
        .transport(nats)
        .request_fn(|e: Echo, _| async move { Ok(e.body.len()) })
        .start()
        .await
        .unwrap()
}

/// Publishes in batches of 100, each followed by a flush of the connection, so
/// the rate is of events written to the server, not of a queue filling up.
async fn publish_rate<F, Fut>(connection: &Client, publish: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MEASURE {
        for _ in 0..100 {
            publish().await;
        }
        connection.flush().await.unwrap();
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = NatsServer::start();
        let url = server.url();

        // Request/reply.
        let client_transport = NatsTransport::connect(NatsOptions::new([url.as_str()]))
            .await
            .unwrap();
        let client = Catga::builder()
            .service("bench-client")
            .transport(client_transport.clone())
            .build()
            .unwrap();
        let bare_client = async_nats::connect(&url).await.unwrap();
        if wants("send") {
            bare_responder(async_nats::connect(&url).await.unwrap(), "bare.req.Echo", false).await;
            bare_responder(async_nats::connect(&url).await.unwrap(), "bareh.req.Echo", true).await;
            let _peer = catga_peer(&url).await;
            assert_eq!(rmp_serde::to_vec_named(&Echo { body: body() }).unwrap().len(), 64);
            for in_flight in [IN_FLIGHT, 1] {
                let (mut bare, mut bare_headers, mut catga) = (vec![], vec![], vec![]);
                for _ in 0..ROUNDS {
                    if side("bare") {
                        bare.push(bare_send(&bare_client, in_flight, false).await);
                        bare_headers.push(bare_send(&bare_client, in_flight, true).await);
                    }
                    if !side("catga") {
                        continue;
                    }
                    let c = client.clone();
                    catga.push(
                        bench::drive(in_flight, WARM_UP, MEASURE, move || {
                            let c = c.clone();
                            async move {
                                let n = c.send(Echo { body: body() }).await.unwrap();
                                assert_eq!(n, 56);
                            }
                        })
                        .await,
                    );
                }
                let (catga, bare, bare_headers) =
                    (bench::median(&catga), bench::median(&bare), bench::median(&bare_headers));
                let case = if in_flight == 1 { "send_one_in_flight" } else { "send" };
                bench::report(case, in_flight, &catga, &bare);
                bench::report(
                    &format!("{case}_vs_bare_with_same_headers"),
                    in_flight,
                    &catga,
                    &bare_headers,
                );
            }
        }
        if wants("cpu") {
            let (mut one, mut two) = (vec![], vec![]);
            for _ in 0..3 {
                one.push(cpu_bound(&url, &client, 1).await);
                two.push(cpu_bound(&url, &client, 2).await);
            }
            let (one, two) = (bench::middle(one), bench::middle(two));
            println!(
                "{{\"case\":\"cpu_bound_one_type\",\"handler_cpu_us\":200,\"one_thread_per_sec\":{one:.0},\"two_threads_per_sec\":{two:.0},\"ratio\":{:.3}}}",
                two / one
            );
        }
        if !wants("publish") {
            return;
        }

        // Publish (no subscribers: measures the publishing side). Each side
        // builds and encodes every event, as a hand-written publisher would.
        let (mut bare, mut bare_headers, mut catga) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            if side("bare") {
                for (with_headers, out) in [(false, &mut bare), (true, &mut bare_headers)] {
                    let c = bare_client.clone();
                    out.push(
                        publish_rate(&bare_client, || {
                            let c = c.clone();
                            async move {
                                let p: bytes::Bytes =
                                    rmp_serde::to_vec_named(&Tick { body: body() }).unwrap().into();
                                if with_headers {
                                    c.publish_with_headers("bare.evt.Tick", catga_like_event_headers(), p)
                                        .await
                                        .unwrap();
                                } else {
                                    c.publish("bare.evt.Tick", p).await.unwrap();
                                }
                            }
                        })
                        .await,
                    );
                    bare_client.flush().await.unwrap();
                }
            }
            if side("catga") {
                catga.push(
                    publish_rate(client_transport.client(), || {
                        let c = client.clone();
                        async move { c.publish(Tick { body: body() }).await.unwrap() }
                    })
                    .await,
                );
            }
        }
        let (catga_rate, bare_rate, bare_headers_rate) = (
            bench::middle(catga),
            bench::middle(bare),
            bench::middle(bare_headers),
        );
        println!(
            "{{\"case\":\"publish\",\"catga_per_sec\":{catga_rate:.0},\"bare_per_sec\":{bare_rate:.0},\"ratio\":{:.3},\"bare_with_same_headers_per_sec\":{bare_headers_rate:.0},\"ratio_vs_same_headers\":{:.3}}}",
            catga_rate / bare_rate,
            catga_rate / bare_headers_rate
        );
    });
}
