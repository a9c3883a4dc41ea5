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
//! An `Idempotency-Key` header (a UUID) on a POST becomes the message id: a
//! client retrying with the same key gets the same answer, once.
//!
//! Errors: validation 422, not found 404, conflict 409, timeout 504,
//! unavailable 503, with a body `{"error": kind, "code": code, "message": text}`.
//! A 503 for overload (this copy at its HTTP limit, or a service behind it
//! answering `overloaded`) carries `Retry-After: 1`: a client should back off
//! (with jitter) and may try another copy.
//!
//! [`admission`] puts a concurrency limit in front of the API: past it,
//! requests are answered 503 at once instead of queueing until they time out.

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use catga::saga::SagaHandle;
use catga::{Error, ErrorKind, Mediator, Metadata, Request};
use serde::Deserialize;
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

/// Admission control for `router`: at most `limit` requests are handled at
/// once; one more is answered at once with 503 and `Retry-After: 1` (load
/// shedding), so a copy offered more than it can take keeps serving what it
/// took at full speed instead of queueing everything past its deadline.
pub fn admission(router: Router, limit: usize) -> Router {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                ApiError(
                    Error::new(
                        ErrorKind::Overloaded,
                        "this copy is at its limit of requests in flight; retry after a moment",
                    )
                    .with_code("http.overloaded"),
                )
            }))
            .load_shed()
            // One limit for the whole API (a plain concurrency limit would
            // count each route apart).
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limit.max(1))),
    )
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error.
pub fn status_of(e: &Error) -> StatusCode {
    match (e.kind(), e.code()) {
        (_, Some("orders.not_found")) => StatusCode::NOT_FOUND,
        (ErrorKind::Validation, _) => StatusCode::UNPROCESSABLE_ENTITY,
        (ErrorKind::Conflict | ErrorKind::InProgress, _) => StatusCode::CONFLICT,
        (ErrorKind::Timeout, _) => StatusCode::GATEWAY_TIMEOUT,
        (
            ErrorKind::Transport | ErrorKind::Store | ErrorKind::Overloaded | ErrorKind::NoHandler,
            _,
        ) => StatusCode::SERVICE_UNAVAILABLE,
        (ErrorKind::Handler, Some(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::json!({
            "error": e.kind().as_str(),
            "code": e.code(),
            "message": e.message(),
        });
        let mut response = (status_of(&e), Json(body)).into_response();
        if e.kind() == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError(shop_common::store::not_found(id))
}

/// Metadata for a command: the `Idempotency-Key` header, if any, is the message id.
fn meta(headers: &HeaderMap) -> Result<Metadata, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(Metadata::new()),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<Uuid>().ok())
            .map(|id| Metadata::new().with_message_id(id))
            .ok_or_else(|| ApiError(Error::validation("Idempotency-Key must be a UUID"))),
    }
}

async fn send<R: Request>(m: &Mediator, r: R, meta: Metadata) -> Result<R::Response, ApiError> {
    Ok(m.send_with(r, meta).await?)
}

async fn create(
    State(m): State<Mediator>,
    headers: HeaderMap,
    Json(cmd): Json<CreateOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    // Admission at the door: while the payment backlog is full, a new order
    // would only be paid late (or abandoned after its create), so it is
    // turned away first, before anything is stored (a count cached for
    // 100 ms: one request in that time reads it from Redis).
    SagaHandle::<crate::Payment>::of(&m)?.admit().await?;
    let order = send(&m, cmd, meta(&headers)?).await?;
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
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(
        send(&m, ShipOrder { order_id: id }, meta(&headers)?).await?,
    ))
}

async fn cancel(
    State(m): State<Mediator>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(
        send(&m, CancelOrder { order_id: id }, meta(&headers)?).await?,
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
