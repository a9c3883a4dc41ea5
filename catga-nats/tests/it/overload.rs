//! Overload over a real nats-server: expired work is not run, a full peer
//! answers `overloaded` at once, one hot message type uses every core, and
//! readiness notices a subscription that stopped serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catga_core::{Catga, ErrorKind, Mediator, Metadata};
use catga_nats::NatsTransport;
use catga_test_support::NatsServer;
use tokio::sync::Semaphore;

use crate::common::*;

/// A peer on a runtime of its own with `workers` threads (0: current-thread),
/// so that a test can block it or compare thread counts. Dropping it shuts
/// the peer down.
struct PeerThread {
    mediator: Mediator,
    nats: NatsTransport,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerThread {
    fn start(
        workers: usize,
        options: catga_nats::NatsOptions,
        build: impl FnOnce(catga_core::CatgaBuilder) -> catga_core::CatgaBuilder + Send + 'static,
    ) -> PeerThread {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = if workers == 0 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            }
            .unwrap();
            rt.block_on(async move {
                let nats = NatsTransport::connect(options).await.unwrap();
                let m = build(Catga::builder().service("overload").transport(nats.clone()))
                    .start()
                    .await
                    .unwrap();
                ready_tx.send((m.clone(), nats)).unwrap();
                let _ = stopped.await;
                m.shutdown().await.unwrap();
            });
        });
        let (mediator, nats) = ready_rx.recv().unwrap();
        PeerThread {
            mediator,
            nats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for PeerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests that waited in a buffer past their deadline (the peer's only
/// thread was blocked) are answered with a timeout and never run; before,
/// each ran with a fresh budget long after its caller gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_past_its_deadline_is_not_run() {
    let server = NatsServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let blocking = Arc::new(AtomicUsize::new(0));
    let (r, b) = (runs.clone(), blocking.clone());
    let peer = PeerThread::start(0, options(&[server.url()]), move |builder| {
        builder
            .request_fn(move |_: Sleep, _| {
                b.fetch_add(1, Ordering::SeqCst);
                // Blocks the peer's only thread: nothing is read meanwhile.
                std::thread::sleep(Duration::from_millis(1500));
                async { Ok(0) }
            })
            .request_fn(move |a: Add, _| {
                r.fetch_add(1, Ordering::SeqCst);
                async move { Ok(a.a + a.b) }
            })
    });
    let caller = client(&[server.url()]).await;

    let blocker = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.send(Sleep { millis: 0 }).await })
    };
    eventually("the peer is blocked", || {
        blocking.load(Ordering::SeqCst) == 1
    })
    .await;
    let short = Metadata::new().with_timeout(Duration::from_millis(200));
    let sends = (0..10).map(|i| caller.send_with(Add { a: i, b: 1 }, short.clone()));
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    }
    blocker.await.unwrap().unwrap();
    eventually("the ten expired requests are counted", || {
        peer.nats.stats().expired == 10
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no expired request ran");

    // A request with time left runs.
    assert_eq!(caller.send(Add { a: 2, b: 3 }).await.unwrap(), 5);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(peer.mediator.ready().is_ok());
}

/// A raw client can send the deadline itself; one already past is answered
/// with `catga.expired`, and an old sender's relative timeout still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_on_the_wire_are_absolute() {
    let server = NatsServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let _peer = Catga::builder()
        .service("calc")
        .transport(connect(&[server.url()]).await)
        .request_fn(move |a: Add, _| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok(a.a + a.b) }
        })
        .start()
        .await
        .unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let payload = rmp_serde::to_vec_named(&Add { a: 1, b: 2 }).unwrap();

    let mut h = async_nats::HeaderMap::new();
    h.insert("Catga-Deadline", (now_ms - 1000).to_string().as_str());
    let reply = raw
        .request_with_headers("catga.req.test.Add", h, payload.clone().into())
        .await
        .unwrap();
    let h = reply.headers.unwrap();
    assert_eq!(h.get("Catga-Error-Kind").unwrap().as_str(), "timeout");
    assert_eq!(h.get("Catga-Error-Code").unwrap().as_str(), "catga.expired");
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    for (name, value) in [
        ("Catga-Deadline", (now_ms + 60_000).to_string()),
        ("Catga-Timeout-Ms", "5000".to_owned()),
    ] {
        let mut h = async_nats::HeaderMap::new();
        h.insert(name, value.as_str());
        let reply = raw
            .request_with_headers("catga.req.test.Add", h, payload.clone().into())
            .await
            .unwrap();
        assert!(reply.headers.is_none(), "{name}: a success");
        assert_eq!(rmp_serde::from_slice::<i64>(&reply.payload).unwrap(), 3);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A peer at its limit answers `overloaded` at once, per message name and for
/// the whole peer, instead of leaving requests to wait out their timeout; the
/// work it holds still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_answers_overloaded_at_once() {
    let server = NatsServer::start();
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let (g1, g2, r1, r2) = (gate.clone(), gate.clone(), running.clone(), running.clone());
    let nats = NatsTransport::connect(
        options(&[server.url()])
            .max_in_flight(2)
            .peer_max_in_flight(3),
    )
    .await
    .unwrap();
    let _peer = Catga::builder()
        .service("gated")
        .transport(nats.clone())
        .request_fn(move |s: Sleep, _| {
            let (gate, running) = (g1.clone(), r1.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                let _pass = gate.acquire().await.unwrap();
                Ok(s.millis)
            }
        })
        .request_fn(move |b: Blob, _| {
            let (gate, running) = (g2.clone(), r2.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                let _pass = gate.acquire().await.unwrap();
                Ok(b.data.len())
            }
        })
        .start()
        .await
        .unwrap();
    let caller = client(&[server.url()]).await;
    let long = Metadata::new().with_timeout(Duration::from_secs(20));

    let held: Vec<_> = (0..2)
        .map(|i| {
            let (caller, long) = (caller.clone(), long.clone());
            tokio::spawn(async move { caller.send_with(Sleep { millis: i }, long).await })
        })
        .collect();
    eventually("two Sleeps run", || running.load(Ordering::SeqCst) == 2).await;

    // The Sleep subscription is full.
    let started = Instant::now();
    for _ in 0..5 {
        let e = caller
            .send_with(Sleep { millis: 9 }, long.clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
        assert_eq!(e.code(), Some("catga.overloaded"));
        assert!(e.is_retryable());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not after the 20 s timeout: {:?}",
        started.elapsed()
    );

    // Blob has room on its subscription, but the peer takes 3 at most.
    let blob = {
        let (caller, long) = (caller.clone(), long.clone());
        tokio::spawn(async move { caller.send_with(Blob { data: "x".into() }, long).await })
    };
    eventually("a Blob runs", || running.load(Ordering::SeqCst) == 3).await;
    let e = caller
        .send_with(Blob { data: "y".into() }, long.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
    let stats = nats.stats();
    // Each of the six was turned away three times: the caller tried again
    // twice (another copy might have had room).
    assert_eq!((stats.in_flight, stats.shed, stats.admitted), (3, 18, 3));

    gate.add_permits(3);
    for (i, h) in held.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().unwrap(), i as u64);
    }
    assert_eq!(blob.await.unwrap().unwrap(), 1);
    eventually("nothing is in flight", || nats.stats().in_flight == 0).await;
    gate.add_permits(1);
    assert_eq!(caller.send(Sleep { millis: 7 }).await.unwrap(), 7);
}

/// A request that a full copy answered `overloaded` is sent again at once
/// and may be taken by another copy with room: of 20 sends while one of two
/// copies is full, more succeed than were ever turned away once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_answer_sends_the_request_to_another_copy() {
    let server = NatsServer::start();
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let full = NatsTransport::connect(options(&[server.url()]).max_in_flight(1))
        .await
        .unwrap();
    let (g, r) = (gate.clone(), running.clone());
    let _full_copy = Catga::builder()
        .service("calc")
        .transport(full.clone())
        .request_fn(move |a: Add, _| {
            let (gate, running) = (g.clone(), r.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                let _pass = gate.acquire().await.unwrap();
                Ok(a.a + a.b)
            }
        })
        .start()
        .await
        .unwrap();
    let caller = client(&[server.url()]).await;
    let held = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.send(Add { a: 0, b: 0 }).await })
    };
    eventually("the full copy is full", || {
        running.load(Ordering::SeqCst) == 1
    })
    .await;
    let _free_copy = Catga::builder()
        .service("calc")
        .transport(connect(&[server.url()]).await)
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .start()
        .await
        .unwrap();

    let mut succeeded = 0;
    for i in 0..20 {
        match caller.send(Add { a: i, b: 1 }).await {
            Ok(n) => {
                assert_eq!(n, i + 1);
                succeeded += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}"),
        }
    }
    let shed = full.stats().shed;
    assert!(shed > 0, "the full copy turned some away");
    // Without a second try, each request would be turned away at most once
    // and exactly `20 - shed` would succeed.
    assert!(
        shed > 20 || succeeded > 20 - shed,
        "{succeeded} succeeded, {shed} were turned away"
    );
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap(), 0);
}

/// Burns about `micros` of CPU.
fn burn(micros: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(micros);
    let mut n = 0u64;
    while Instant::now() < end {
        n = n.wrapping_add(1);
    }
    n
}

/// Requests per second one peer with `workers` threads serves of ONE message
/// type whose handler burns 1 ms of CPU (more than the bench's 200 µs, so the
/// client's and the server's share of this machine's two cores, larger in a
/// debug build, weighs less).
async fn cpu_bound_throughput(url: &str, caller: &Mediator, workers: usize) -> f64 {
    let peer = PeerThread::start(workers, options(&[url.to_owned()]), |b| {
        b.request_fn(|a: Add, _| {
            burn(1000);
            async move { Ok(a.a) }
        })
    });
    let _ = peer.mediator.service();
    // Warm up, then measure.
    let run = async |n: i64| {
        let sends = futures_util::stream::iter(0..n)
            .map(|i| caller.send(Add { a: i, b: 0 }))
            .buffer_unordered(32);
        futures_util::StreamExt::collect::<Vec<_>>(sends).await
    };
    use futures_util::StreamExt as _;
    run(50).await;
    let started = Instant::now();
    let n = 500;
    for r in run(n).await {
        r.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// One hot message type uses more than one core: its subscriptions are read
/// by a task per runtime thread. Asserted loosely (the client and the server
/// share this machine's two cores); `cargo bench -p catga-nats --bench remote`
/// (case `cpu`) measures it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_cpu_bound_handler_of_one_message_type_uses_more_than_one_core() {
    let server = NatsServer::start();
    let caller = client(&[server.url()]).await;
    // Up to five tries: the other tests of this binary share the two cores
    // for a while, and a try they disturb says nothing.
    let mut best = 0.0f64;
    for _ in 0..5 {
        let one = cpu_bound_throughput(&server.url(), &caller, 1).await;
        let two = cpu_bound_throughput(&server.url(), &caller, 2).await;
        best = best.max(two / one);
        eprintln!("ratio {:.2} ({one:.0} vs {two:.0})", two / one);
        if best >= 1.3 {
            break;
        }
    }
    assert!(
        best >= 1.3,
        "2 threads serve {best:.2} x what 1 thread serves"
    );
}

/// A subscription that stops serving while the peer runs (here: its client
/// drained under it) makes the peer not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reflects_a_subscription_that_stopped_serving() {
    let server = NatsServer::start();
    let nats = connect(&[server.url()]).await;
    let peer = Catga::builder()
        .service("calc")
        .transport(nats.clone())
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .start()
        .await
        .unwrap();
    assert!(peer.ready().is_ok());
    nats.client().drain().await.unwrap();
    eventually("the subscriptions are counted dead", || {
        nats.stats().dead_subscriptions > 0
    })
    .await;
    let e = peer.ready().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
}
