//! Operations: logs, metrics, health endpoints, graceful shutdown.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use catga::Peer;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::StockStore;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// The process's Prometheus recorder (installed once).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms (not summaries) for every `_seconds` metric, so the
            // copies of a service aggregate.
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                    .expect("buckets are not empty")
            };
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
}

/// What the health and metrics endpoints look at.
#[derive(Clone)]
pub struct Probe {
    /// The running peer (readiness, leader status, outbox backlog).
    pub peer: Arc<Peer>,
    /// A store to ping.
    pub store: Arc<dyn StockStore>,
    /// The NATS transport, when clustered.
    pub nats: Option<catga::nats::NatsTransport>,
    /// The HTTP admission gate, where the service has one.
    pub admission: Option<catga_axum::AdmissionStats>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

/// `/health/live`, `/health/ready`, `/metrics`, and `/ops/leading` (the
/// leader-only tasks this copy runs now, one name per line).
pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render))
        .route("/ops/leading", get(leading))
        .with_state(probe)
}

async fn leading(State(p): State<Probe>) -> String {
    p.peer.leading().join("\n")
}

async fn ready(State(p): State<Probe>) -> (StatusCode, String) {
    // NATS connected and every subscription serving; the lock, outbox and
    // saga stores answering.
    let health = p.peer.health(Duration::from_secs(2)).await;
    if !health.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, health.problems());
    }
    match tokio::time::timeout(Duration::from_secs(2), p.store.available("__health")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: no answer".into()),
    }
}

async fn render(State(p): State<Probe>) -> String {
    p.peer.record_metrics().await;
    if let Some(nats) = &p.nats {
        nats.record_metrics();
    }
    if let Some(a) = &p.admission {
        metrics::gauge!("catga_http_limit").set(a.limit() as f64);
        metrics::gauge!("catga_http_in_flight").set(a.in_flight() as f64);
        metrics::counter!("catga_http_admitted_total").absolute(a.admitted());
        metrics::counter!("catga_http_shed_total").absolute(a.shed());
    }
    metrics().render()
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
