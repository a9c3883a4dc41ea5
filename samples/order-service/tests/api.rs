//! The HTTP API over the embedded shop, called without a server.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{call, call_with};
use serde_json::{Value, json};
use shop_common::messages::GetStock;
use shop_common::{Config, Infra};
use tower::ServiceExt;

mod common;

async fn shop() -> (axum::Router, catga::Peer) {
    shop_common::ops::init_tracing();
    let config = Config {
        service: "orders".into(),
        nats: None,
        redis: None,
        http: "127.0.0.1:0".parse().unwrap(),
        http_limit: shop_common::config::HttpLimit::Fixed(256),
        shutdown_grace: Duration::from_secs(5),
        seed_stock: vec![("book".into(), 10)],
    };
    let infra = Infra::connect(config).await.unwrap();
    infra.seed_stock().await.unwrap();
    let mediator = order_service::embedded(&infra).start().await.unwrap();
    (order_service::app(mediator.mediator().clone()), mediator)
}

async fn settled(app: &axum::Router, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, order) = call(app, "GET", &format!("/orders/{id}"), None).await;
        if order["status"] != "paying" {
            return order;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payment never settled: {order}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn order(customer: &str, qty: u32) -> Value {
    json!({"customer": customer, "sku": "book", "qty": qty, "unit_price_cents": 1500})
}

#[tokio::test]
async fn create_pay_ship_and_read_back() {
    let (app, m) = shop().await;
    let (status, created) = call(&app, "POST", "/orders", Some(order("ann", 2))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["status"], "created");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, paying) = call(&app, "POST", &format!("/orders/{id}/pay"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(paying["status"], "paying");
    assert_eq!(settled(&app, &id).await["status"], "paid");
    assert_eq!(m.send(GetStock { sku: "book".into() }).await.unwrap(), 8);
    let (status, shipped) = call(&app, "POST", &format!("/orders/{id}/ship"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shipped["status"], "shipped");
    let (_, list) = call(&app, "GET", "/orders?limit=10", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_declined_card_rejects_the_order_and_gives_the_stock_back() {
    let (app, m) = shop().await;
    let (_, created) = call(&app, "POST", "/orders", Some(order("declined", 3))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    call(&app, "POST", &format!("/orders/{id}/pay"), None).await;
    let order = settled(&app, &id).await;
    assert_eq!(order["status"], "rejected");
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("payment.declined"),
        "{order}"
    );
    assert_eq!(m.send(GetStock { sku: "book".into() }).await.unwrap(), 10);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn out_of_stock_rejects_the_order() {
    let (app, m) = shop().await;
    let (_, created) = call(&app, "POST", "/orders", Some(order("bob", 11))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    call(&app, "POST", &format!("/orders/{id}/pay"), None).await;
    let order = settled(&app, &id).await;
    assert_eq!(order["status"], "rejected");
    assert!(
        order["reason"].as_str().unwrap().contains("out_of_stock"),
        "{order}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancelling_a_paid_order_releases_its_stock() {
    let (app, m) = shop().await;
    let (_, created) = call(&app, "POST", "/orders", Some(order("cy", 4))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    call(&app, "POST", &format!("/orders/{id}/pay"), None).await;
    assert_eq!(settled(&app, &id).await["status"], "paid");
    let (status, cancelled) = call(&app, "POST", &format!("/orders/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while m.send(GetStock { sku: "book".into() }).await.unwrap() != 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stock never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = call(&app, "POST", &format!("/orders/{id}/ship"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_map_to_status_codes_with_a_json_body() {
    let (app, m) = shop().await;
    let (status, body) = call(&app, "POST", "/orders", Some(order("", 0))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "validation");
    let (status, body) = call(
        &app,
        "GET",
        "/orders/0193b0d2-5a1e-7cc4-9b1e-3f6a2c0d4e11",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "orders.not_found");
    let (status, _) = call(
        &app,
        "POST",
        "/orders/0193b0d2-5a1e-7cc4-9b1e-3f6a2c0d4e11/ship",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call_with(
        &app,
        "POST",
        "/orders",
        Some(order("d", 1)),
        Some("not a key: spaces"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Any visible-ASCII key works, a UUID or not (as Stripe's do).
    let (status, body) = call_with(
        &app,
        "POST",
        "/orders",
        Some(order("d", 1)),
        Some("order-d-1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_create_return_the_same_order() {
    let (app, m) = shop().await;
    let key = "0193b0d2-5a1e-7cc4-9b1e-3f6a2c0d4e99";
    let (_, first) = call_with(&app, "POST", "/orders", Some(order("eve", 1)), Some(key)).await;
    let (_, again) = call_with(&app, "POST", "/orders", Some(order("eve", 1)), Some(key)).await;
    assert_eq!(first["id"], again["id"]);
    let (_, list) = call(&app, "GET", "/orders", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    m.shutdown().await.unwrap();
}

/// Past its concurrency limit the API answers 503 with `Retry-After` at once,
/// on any route, and serves again when there is room.
#[tokio::test]
async fn admission_sheds_what_is_over_the_limit_with_retry_after() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let router = axum::Router::new()
        .route(
            "/slow",
            axum::routing::get(move || {
                let g = g.clone();
                async move {
                    let _pass = g.acquire().await.unwrap();
                    "done"
                }
            }),
        )
        .route("/fast", axum::routing::get(|| async { "fast" }));
    let app =
        order_service::http::admission(shop_common::config::HttpLimit::Fixed(1)).layer(router);
    let get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
    let held = tokio::spawn(app.clone().oneshot(get("/slow")));
    // Wait until the slow request holds the one slot.
    let mut tries = 0;
    let shed = loop {
        let res = app.clone().oneshot(get("/fast")).await.unwrap();
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            break res;
        }
        tries += 1;
        assert!(tries < 1000, "never shed while the slot was held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(shed.headers()["retry-after"], "1");
    let body = axum::body::to_bytes(shed.into_body(), 1 << 16)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "overloaded");
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    let res = app.clone().oneshot(get("/fast")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
