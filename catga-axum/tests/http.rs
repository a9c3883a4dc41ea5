//! catga-axum through a router, as a client sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{Request as HttpRequest, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use catga_axum::{ApiError, IdempotencyKey, SendService, admission, health_routes};
use catga_core::store::MemoryIdempotencyStore;
use catga_core::{Catga, Error, ErrorKind, Mediator, Message, Request};
use serde::{Deserialize, Serialize};
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: i64,
}
impl Message for Charge {
    const NAME: &'static str = "http.Charge";
    const IDEMPOTENT: bool = true;
}
impl Request for Charge {
    type Response = i64;
}

async fn charge(
    State(m): State<Mediator>,
    key: IdempotencyKey,
    Json(cmd): Json<Charge>,
) -> Result<Json<i64>, ApiError> {
    Ok(Json(m.send_with(cmd, key.metadata()).await?))
}

async fn shop(runs: Arc<AtomicUsize>) -> (catga_core::Peer, Router) {
    let peer = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .request_fn(move |c: Charge, _| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                match c.cents {
                    n if n < 0 => Err(Error::validation("a charge is positive")),
                    0 => Err(Error::new(ErrorKind::Overloaded, "busy")),
                    1 => {
                        Err(Error::new(ErrorKind::Conflict, "taken").with_code("billing.not_found"))
                    }
                    n => Ok(n),
                }
            }
        })
        .start()
        .await
        .unwrap();
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(peer.mediator().clone());
    (peer, app)
}

async fn post_charge(
    app: &Router,
    cents: i64,
    key: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut req = HttpRequest::post("/charges").header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(Body::from(format!(r#"{{"cents":{cents}}}"#)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap(), retry)
}

#[tokio::test]
async fn errors_become_statuses_and_an_idempotency_key_charges_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (peer, app) = shop(runs.clone()).await;
    let (s, body, _) = post_charge(&app, 1500, Some("order-17-charge")).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "1500"));
    let (s, body, _) = post_charge(&app, 1500, Some("order-17-charge")).await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, "1500"),
        "the stored answer"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
    // The same key with another body: a new request under an old key.
    let (s, body, _) = post_charge(&app, 1600, Some("order-17-charge")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("catga.idempotency_key_reused"), "{body}");

    let (s, body, _) = post_charge(&app, -5, None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains(r#""error":"validation""#), "{body}");
    let (s, _, retry) = post_charge(&app, 0, None).await;
    assert_eq!(
        (s, retry.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    let (s, _, _) = post_charge(&app, 1, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let ran = runs.load(Ordering::SeqCst);
    let (s, body, _) = post_charge(&app, 5, Some("bad key with spaces")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("http.bad_idempotency_key"), "{body}");
    // A header value that is not even text (obs-text bytes): the same answer.
    let resp = app
        .clone()
        .oneshot(
            HttpRequest::post("/charges")
                .header("content-type", "application/json")
                .header(
                    "idempotency-key",
                    axum::http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
                )
                .body(Body::from(r#"{"cents":5}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("http.bad_idempotency_key"), "{body}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        ran,
        "a refused key runs nothing"
    );
    peer.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_routes_answer_from_the_peer() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (peer, _) = shop(runs).await;
    let app = health_routes(Arc::new(peer), Duration::from_secs(1));
    for path in ["/health/live", "/health/ready"] {
        let resp = app
            .clone()
            .oneshot(HttpRequest::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

/// Past the admission limit, a request is answered 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_sheds_what_is_over_the_limit() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let (g, e) = (gate.clone(), entered.clone());
    let app = admission(
        Router::new().route(
            "/slow",
            post(move || {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    e.notify_one();
                    let _ = g.acquire().await;
                    "done"
                }
            }),
        ),
        1,
    );
    let first = tokio::spawn(
        app.clone()
            .oneshot(HttpRequest::post("/slow").body(Body::empty()).unwrap()),
    );
    // The first holds the only slot, inside its handler.
    tokio::time::timeout(Duration::from_secs(20), entered.notified())
        .await
        .expect("the first request runs");
    let shed = tokio::time::timeout(
        Duration::from_secs(20),
        app.clone()
            .oneshot(HttpRequest::post("/slow").body(Body::empty()).unwrap()),
    )
    .await
    .expect("answered at once, not queued")
    .unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers().get("retry-after").unwrap(), "1");
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// A POST route that says it entered (a permit on `entered`) and holds its
/// request until `gate` lets it go.
fn held(
    gate: &Arc<tokio::sync::Semaphore>,
    entered: &Arc<tokio::sync::Semaphore>,
) -> axum::routing::MethodRouter {
    let (g, e) = (gate.clone(), entered.clone());
    post(move || {
        let (g, e) = (g.clone(), e.clone());
        async move {
            e.add_permits(1);
            let _ = g.acquire().await;
            "done"
        }
    })
}

/// POSTs to `path` on a task of its own; its status when answered.
fn post_in_background(app: &Router, path: &'static str) -> tokio::task::JoinHandle<StatusCode> {
    let app = app.clone();
    tokio::spawn(async move {
        app.oneshot(HttpRequest::post(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    })
}

/// With part of the limit reserved, new work is shed first: while two new
/// requests hold the unreserved slots, a third new one is answered 503 and a
/// request continuing begun work still gets in; once every slot is taken,
/// that is shed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_with_reserve_sheds_new_work_first() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Semaphore::new(0));
    let app = catga_axum::admission_with_reserve(
        Router::new()
            .route("/new", held(&gate, &entered))
            .route("/next", held(&gate, &entered)),
        4,
        2,
        |req| req.uri().path() == "/new",
    );
    let call = |path: &'static str| post_in_background(&app, path);
    let in_handlers = |n: u32| {
        let entered = entered.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), entered.acquire_many(n))
                .await
                .expect("the requests run")
                .unwrap()
                .forget();
        }
    };
    let held = [call("/new"), call("/new")];
    in_handlers(2).await;
    let answered_at_once = |path| {
        let task = call(path);
        async move {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("answered at once, not queued")
                .unwrap()
        }
    };
    assert_eq!(
        answered_at_once("/new").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let continued = [call("/next"), call("/next")];
    in_handlers(2).await;
    assert_eq!(
        answered_at_once("/next").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    gate.add_permits(10);
    for task in held.into_iter().chain(continued) {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // With the slots free again, new work gets in.
    let after = call("/new");
    in_handlers(1).await;
    assert_eq!(after.await.unwrap(), StatusCode::OK);
}

/// Clients that keep `clients` requests offered to `app` until `stop`.
fn offer(app: Router, clients: usize, stop: Arc<std::sync::atomic::AtomicBool>) {
    for _ in 0..clients {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = app
                    .clone()
                    .oneshot(HttpRequest::post("/work").body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
}

/// Waits (up to a minute) until `limit` passes `ok`.
async fn limit_reaches(stats: &catga_axum::AdmissionStats, ok: impl Fn(usize) -> bool) -> usize {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ok(stats.limit()) {
        assert!(
            tokio::time::Instant::now() < until,
            "the limit stayed at {} ({stats:?})",
            stats.limit()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stats.limit()
}

/// An adaptive limit falls when admitted requests queue: behind a
/// bottleneck of two at a time, 48 clients and a limit of 32 mean 30
/// requests waiting, latency many times the unloaded one; the limit comes
/// down towards the bottleneck and the rest is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_falls_when_requests_queue() {
    let bottleneck = Arc::new(tokio::sync::Semaphore::new(2));
    let b = bottleneck.clone();
    let work = Router::new().route(
        "/work",
        post(move || {
            let b = b.clone();
            async move {
                let _one_of_two = b.acquire().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                "done"
            }
        }),
    );
    let gate = catga_axum::Admission::adaptive(
        catga_axum::AdaptiveLimit::new().initial(32).min(2).max(64),
    );
    let stats = gate.stats();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    offer(gate.layer(work), 48, stop.clone());
    limit_reaches(&stats, |l| l <= 12).await;
    stop.store(true, Ordering::Relaxed);
    assert!(stats.shed() > 0, "what is over the limit is shed");
    assert!(stats.admitted() > 0);
}

/// An adaptive limit grows while requests take their unloaded time and the
/// limit is in use: no bottleneck, 32 clients, starting at 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_grows_while_latency_holds() {
    let work = Router::new().route(
        "/work",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "done"
        }),
    );
    let gate =
        catga_axum::Admission::adaptive(catga_axum::AdaptiveLimit::new().initial(4).min(2).max(64));
    let stats = gate.stats();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    offer(gate.layer(work), 32, stop.clone());
    // Twice where it started; how far beyond depends on how evenly this
    // machine's timers fire (the unit tests check the rule itself).
    limit_reaches(&stats, |l| l >= 8).await;
    stop.store(true, Ordering::Relaxed);
}

/// A reserve given as a share follows the limit: with a limit of 4 and
/// half kept, new work is shed once two new requests are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_share_sheds_new_work_first() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Semaphore::new(0));
    let admission =
        catga_axum::Admission::fixed(4).reserve_share(0.5, |req| req.uri().path() == "/new");
    let stats = admission.stats();
    let app = admission.layer(
        Router::new()
            .route("/new", held(&gate, &entered))
            .route("/next", held(&gate, &entered)),
    );
    let call = |path: &'static str| post_in_background(&app, path);
    let held = [call("/new"), call("/new")];
    tokio::time::timeout(Duration::from_secs(20), entered.acquire_many(2))
        .await
        .expect("the requests run")
        .unwrap()
        .forget();
    let third = tokio::time::timeout(Duration::from_secs(20), call("/new"))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(third, StatusCode::SERVICE_UNAVAILABLE);
    let next = call("/next");
    tokio::time::timeout(Duration::from_secs(20), entered.acquire_many(1))
        .await
        .expect("continuing work gets in")
        .unwrap()
        .forget();
    assert_eq!((stats.in_flight(), stats.shed(), stats.limit()), (3, 1, 4));
    gate.add_permits(10);
    for task in held.into_iter().chain([next]) {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

/// `send` as a tower Service: layers apply in front of the mediator.
#[tokio::test]
async fn send_is_a_tower_service() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (peer, _) = shop(runs.clone()).await;
    let mut charges = ServiceBuilder::new()
        .concurrency_limit(4)
        .service(SendService::<Charge>::new(peer.mediator().clone()));
    let n = charges
        .ready()
        .await
        .unwrap()
        .call(Charge { cents: 42 })
        .await
        .unwrap();
    assert_eq!(n, 42);
    let e = charges
        .ready()
        .await
        .unwrap()
        .call(Charge { cents: -1 })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    peer.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_metrics_route_serves_what_the_renderer_returns() {
    let app = catga_axum::metrics_route(|| async { "catga_up 1\n".to_owned() });
    let resp = app
        .oneshot(HttpRequest::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    assert_eq!(&body[..], b"catga_up 1\n");
}
