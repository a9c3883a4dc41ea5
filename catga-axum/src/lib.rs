//! # catga-axum
//!
//! The glue every HTTP service over Catga writes, written once:
//!
//! - [`ApiError`]: a Catga [`Error`] as an HTTP response: status by kind
//!   (validation 422, conflict 409, timeout 504, unavailable 503 with
//!   `Retry-After` for overload, ...), body `{"error", "code", "message"}`.
//!   Handlers return `Result<_, ApiError>` and use `?` on Catga calls.
//! - [`IdempotencyKey`]: the `Idempotency-Key` header as the message id, so a
//!   client retrying with the same key gets the same answer, once.
//! - [`health_routes`]: `/health/live` and `/health/ready` (from
//!   [`Peer::health`]); [`metrics_route`]: `/metrics` from any renderer.
//! - [`Admission`]: at most N requests in flight, a fixed N or one that
//!   follows latency ([`AdaptiveLimit`]), optionally with a reserve for begun work; the
//!   rest answered 503 at once (load shedding) instead of queueing past their
//!   deadlines. [`admission`] is the fixed limit in one call.
//! - [`SendService`]: `send` as a tower [`Service`](tower::Service), so
//!   `ServiceBuilder` layers (rate limits, load shedding, timeouts; enable
//!   the tower features they need in your own `tower` dependency) apply in
//!   front of the mediator.
//!
//! ```
//! use axum::{Json, Router, extract::State, routing::post};
//! use catga_axum::{ApiError, IdempotencyKey};
//! use catga_core::{Catga, Mediator, Message, Request};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Charge { cents: u64 }
//! impl Message for Charge { const NAME: &'static str = "billing.Charge"; }
//! impl Request for Charge { type Response = u64; }
//!
//! async fn charge(
//!     State(m): State<Mediator>,
//!     key: IdempotencyKey,
//!     Json(cmd): Json<Charge>,
//! ) -> Result<Json<u64>, ApiError> {
//!     Ok(Json(m.send_with(cmd, key.metadata()).await?))
//! }
//!
//! let mediator = Catga::builder().request_fn(|c: Charge, _| async move { Ok(c.cents) }).build()?;
//! let app: Router = Router::new().route("/charges", post(charge)).with_state(mediator);
//! # drop(app);
//! # Ok::<(), catga_core::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

mod admission;
mod error;

pub use error::ApiError;

pub use admission::{AdaptiveLimit, Admission, AdmissionStats, admission, admission_with_reserve};

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;

use axum::Router;
use axum::routing::get;
use catga_core::{Error, Mediator, Metadata, Peer, Request, Uuid};

/// The `Idempotency-Key` request header as the message id of the command it
/// carries: a client that retries with the same key gets the same answer,
/// and the effect happens once (with the handler declared idempotent).
///
/// A UUID is used as it is; any other key (as Stripe and the IETF draft
/// allow) becomes a UUID v5 of it, the same on every copy. Absent, a new id.
/// A key that is empty, not visible ASCII, or longer than 255 bytes, is
/// refused (422, code `http.bad_idempotency_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<Uuid>);

/// The namespace of UUIDs made from non-UUID keys.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6361_7467_615f_6964_656d_706f_7465_6e74);

impl IdempotencyKey {
    /// The metadata to send the command with: the key as the message id.
    pub fn metadata(&self) -> Metadata {
        match self.0 {
            Some(id) => Metadata::new().with_message_id(id),
            None => Metadata::new(),
        }
    }

    /// Reads a header value.
    pub fn parse(value: &str) -> Result<IdempotencyKey, Error> {
        if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad_key());
        }
        Ok(IdempotencyKey(Some(value.parse().unwrap_or_else(|_| {
            Uuid::new_v5(&KEY_NAMESPACE, value.as_bytes())
        }))))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => match v.to_str() {
                Ok(s) => IdempotencyKey::parse(s).map_err(ApiError),
                Err(_) => Err(ApiError(bad_key())),
            },
        }
    }
}

/// The error of an `Idempotency-Key` header that is not a key.
fn bad_key() -> Error {
    Error::validation("Idempotency-Key must be 1 to 255 visible ASCII characters")
        .with_code("http.bad_idempotency_key")
}

/// `/health/live` (200 while the process answers) and `/health/ready` (200
/// when [`Peer::health`] finds everything answering within `timeout`,
/// otherwise 503 with the problems, one per line).
pub fn health_routes(peer: Arc<Peer>, timeout: Duration) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(move |State(peer): State<Arc<Peer>>| async move {
                let health = peer.health(timeout).await;
                if health.is_ready() {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, health.problems())
                }
            }),
        )
        .with_state(peer)
}

/// `/metrics`: what `render` returns, e.g. `Peer::record_metrics` (feature
/// `metrics`, for the gauges read on demand) then the Prometheus text of a
/// `metrics-exporter-prometheus` handle.
///
/// ```
/// let app: axum::Router = catga_axum::metrics_route(|| async { "# no metrics yet\n".to_owned() });
/// # drop(app);
/// ```
pub fn metrics_route<F, Fut>(render: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    Router::new().route("/metrics", get(render))
}

/// `send` of request `R` as a tower [`Service`](tower::Service): put
/// `ServiceBuilder` layers (concurrency limits, load shedding, rate limits,
/// timeouts) in front of the mediator. Always ready; each call sends one
/// request.
///
/// ```
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// # use catga_core::{Catga, Message, Request};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct Ping;
/// # impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
/// # impl Request for Ping { type Response = u8; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// let mediator = Catga::builder().request_fn(|_: Ping, _| async { Ok(1) }).build()?;
/// let mut pings = ServiceBuilder::new()
///     .concurrency_limit(64)
///     .service(catga_axum::SendService::<Ping>::new(mediator));
/// assert_eq!(pings.ready().await?.call(Ping).await?, 1);
/// # Ok(()) }
/// ```
pub struct SendService<R> {
    mediator: Mediator,
    _request: PhantomData<fn(R)>,
}

impl<R> SendService<R> {
    /// Sends through `mediator`.
    pub fn new(mediator: Mediator) -> Self {
        SendService {
            mediator,
            _request: PhantomData,
        }
    }
}

impl<R> Clone for SendService<R> {
    fn clone(&self) -> Self {
        SendService::new(self.mediator.clone())
    }
}

impl<R> std::fmt::Debug for SendService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendService")
            .field("request", &std::any::type_name::<R>())
            .finish()
    }
}

impl<R: Request> tower::Service<R> for SendService<R> {
    type Response = R::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<R::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let mediator = self.mediator.clone();
        Box::pin(async move { mediator.send(request).await })
    }
}
