//! The HTTP API: JSON over axum, errors mapped to status codes the same way
//! everywhere.
//!
//! | method and path | command or query | success |
//! |-----------------|------------------|---------|
//! | `POST /orders` | `CreateOrder` (body) | 201 + order |
//! | `POST /orders/{id}/pay` | `PayOrder` (starts the payment saga) | 202 + order |
//! | `POST /orders/{id}/ship` | `ShipOrder` | 200 + order |
//! | `POST /orders/{id}/cancel` | `CancelOrder` | 200 + order |
//! | `GET /orders/{id}` | `GetOrder` | 200 + order, 404 |
//! | `GET /orders?limit=N` | `ListOrders` | 200 + orders |
//!
//! An `Idempotency-Key` header on a POST becomes the message id
//! ([`catga_axum::IdempotencyKey`]): a client retrying with the same key gets
//! the same answer, once.
//!
//! Errors ([`catga_axum::ApiError`]): validation 422, not found 404,
//! conflict 409, timeout 504, unavailable 503, with a body
//! `{"error": kind, "code": code, "message": text}`.
//! A 503 for overload (this copy at its HTTP limit, or a service behind it
//! answering `overloaded`) carries `Retry-After: 1`: a client should back off
//! (with jitter) and may try another copy.
//!
//! [`admission`] makes the concurrency limit (fixed or adaptive, with a
//! quarter kept for everything but new orders) that the service layers in
//! front of the API: past it, requests are answered 503 at once instead of
//! queueing until they time out.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use catga::saga::SagaHandle;
use catga::{Mediator, Metadata, Request};
pub use catga_axum::ApiError;
use catga_axum::IdempotencyKey;
use serde::Deserialize;
use shop_common::config::HttpLimit;
use shop_common::messages::{
    CancelOrder, CreateOrder, GetOrder, ListOrders, Order, PayOrder, ShipOrder,
};
use uuid::Uuid;

/// The router over `mediator`.
pub fn router(mediator: Mediator) -> Router {
    Router::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(one))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/ship", post(ship))
        .route("/orders/{id}/cancel", post(cancel))
        .with_state(mediator)
}

/// Admission control (see [`catga_axum::Admission`]): a fixed or adaptive
/// limit of requests in flight, a quarter of it kept for orders already
/// created, so that under overload an order's pay is not shed behind new
/// creates (a create whose pay is shed is wasted work). Layer it with
/// [`Admission::layer`](catga_axum::Admission::layer); its stats go to
/// `/metrics`.
pub fn admission(limit: HttpLimit) -> catga_axum::Admission {
    let starts_work = |req: &axum::extract::Request| {
        req.method() == axum::http::Method::POST && req.uri().path() == "/orders"
    };
    let gate = match limit {
        HttpLimit::Fixed(n) => catga_axum::Admission::fixed(n),
        HttpLimit::Adaptive { max } => catga_axum::Admission::adaptive(
            catga_axum::AdaptiveLimit::new().min(4.min(max)).max(max),
        ),
    };
    gate.reserve_share(0.25, starts_work)
}

fn not_found(id: Uuid) -> ApiError {
    ApiError(shop_common::store::not_found(id))
}

async fn send<R: Request>(m: &Mediator, r: R, meta: Metadata) -> Result<R::Response, ApiError> {
    Ok(m.send_with(r, meta).await?)
}

async fn create(
    State(m): State<Mediator>,
    key: IdempotencyKey,
    Json(cmd): Json<CreateOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    // Admission at the door: while the payment backlog is full, a new order
    // would only be paid late (or abandoned after its create), so it is
    // turned away first, before anything is stored (a count cached for
    // 100 ms: one request in that time reads it from Redis).
    SagaHandle::<crate::Payment>::of(&m)?.admit().await?;
    let order = send(&m, cmd, key.metadata()).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn pay(
    State(m): State<Mediator>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let order = send(&m, PayOrder { order_id: id }, Metadata::new()).await?;
    Ok((StatusCode::ACCEPTED, Json(order)))
}

async fn ship(
    State(m): State<Mediator>,
    key: IdempotencyKey,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(
        send(&m, ShipOrder { order_id: id }, key.metadata()).await?,
    ))
}

async fn cancel(
    State(m): State<Mediator>,
    key: IdempotencyKey,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(
        send(&m, CancelOrder { order_id: id }, key.metadata()).await?,
    ))
}

async fn one(State(m): State<Mediator>, Path(id): Path<Uuid>) -> Result<Json<Order>, ApiError> {
    send(&m, GetOrder { order_id: id }, Metadata::new())
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<usize>,
}

async fn list(
    State(m): State<Mediator>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let limit = page.limit.unwrap_or(50);
    Ok(Json(send(&m, ListOrders { limit }, Metadata::new()).await?))
}
