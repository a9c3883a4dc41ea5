//! Operations: logs, metrics, health endpoints, graceful shutdown.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use catga::Peer;
use catga::behavior::{Behavior, Envelope, Next, Reply};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// Counts dispatches, errors and latency per message through the `metrics` facade.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics;

impl Behavior for Metrics {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: Next<'a>) -> catga::Result<Reply> {
        let started = Instant::now();
        let result = next.run(env).await;
        let message = env.name();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        metrics::counter!("catga_dispatch_total", "message" => message, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("catga_dispatch_seconds", "message" => message)
            .record(started.elapsed().as_secs_f64());
        result
    }
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
    // NATS connected and every subscription serving.
    if let Err(e) = p.peer.ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("nats: {e}"));
    }
    match tokio::time::timeout(Duration::from_secs(2), p.store.available("__health")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: no answer".into()),
    }
}

async fn render(State(p): State<Probe>) -> String {
    if let Some(outbox) = p.peer.outbox_store()
        && let Ok(n) = outbox.backlog().await
    {
        metrics::gauge!("catga_outbox_backlog").set(n as f64);
    }
    for task in p.peer.leading() {
        metrics::gauge!("catga_leader", "task" => task).set(1.0);
    }
    if let Some(nats) = &p.nats {
        let s = nats.stats();
        metrics::gauge!("catga_in_flight").set(s.in_flight as f64);
        metrics::gauge!("catga_in_flight_bytes").set(s.in_flight_bytes as f64);
        metrics::counter!("catga_admitted_total").absolute(s.admitted);
        metrics::counter!("catga_shed_total").absolute(s.shed);
        metrics::counter!("catga_expired_total").absolute(s.expired);
        metrics::counter!("catga_panicked_total").absolute(s.panicked);
        metrics::counter!("catga_slow_consumer_drops_total").absolute(s.slow_consumer_drops);
    }
    metrics::counter!("catga_retry_denied_total").absolute(p.peer.retry_budget().denied());
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
