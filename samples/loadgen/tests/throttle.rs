//! The load generator's client-side throttle over real HTTP: while the shop
//! sheds most of what it is sent, new orders are turned away in the client;
//! the pay of an order already created is always sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use loadgen::drive::{Throttle, client, place};

/// A shop that creates every order and sheds every pay (`Retry-After:
/// 0.01`); counts of what reached it.
async fn shedding_shop() -> (String, Arc<AtomicU32>, Arc<AtomicU32>) {
    let (creates, pays) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (c, p) = (creates.clone(), pays.clone());
    let app = Router::new()
        .route(
            "/orders",
            post(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::CREATED,
                        Json(serde_json::json!({"id": uuid::Uuid::now_v7()})),
                    )
                }
            }),
        )
        .route(
            "/orders/{id}/pay",
            post(move || {
                p.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0.01")]) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, creates, pays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pays_are_never_throttled_new_orders_are_while_most_is_shed() {
    let (url, creates, pays) = shedding_shop().await;
    let (http, urls, throttle) = (client(), [url], Throttle::new());

    // One order: created, then its pay shed until the deadline; the throttle
    // fills with 503s but never holds a pay back.
    let until = Instant::now() + Duration::from_secs(2);
    let placed = place(&http, &urls, 0, 1, until, Some(&throttle)).await;
    assert!(placed.created.is_some() && !placed.accepted);
    assert_eq!(placed.throttled, 0, "a pay is always sent");
    let sent = pays.load(Ordering::SeqCst);
    assert!(sent >= 5, "pays tried again after each 503: {sent}");
    assert_eq!(
        placed.attempts,
        sent + 1,
        "every attempt but the create was a pay"
    );
    assert!(
        throttle.reject_probability() > 0.5,
        "mostly shed: {}",
        throttle.reject_probability()
    );

    // New orders now: most are turned away before they are sent.
    let before = creates.load(Ordering::SeqCst);
    let mut throttled = 0;
    for n in 0..20 {
        let until = Instant::now() + Duration::from_millis(30);
        throttled += place(&http, &urls, n, 1, until, Some(&throttle))
            .await
            .throttled;
    }
    let created = creates.load(Ordering::SeqCst) - before;
    assert!(throttled > 0, "new orders turned away in the client");
    assert!(
        created < 20,
        "{created} of 20 new orders sent while most is shed"
    );

    // Without a throttle every create is sent (the create is the first
    // thing sent; the deadline leaves a slow machine time to send it).
    let before = creates.load(Ordering::SeqCst);
    for n in 0..5 {
        let until = Instant::now() + Duration::from_millis(300);
        place(&http, &urls, n, 1, until, None).await;
    }
    assert_eq!(creates.load(Ordering::SeqCst) - before, 5);
}
