//! Metrics: every dispatch counted and timed through the `metrics` facade
//! (feature `metrics`), for any exporter (Prometheus, StatsD, OpenTelemetry).

use super::{Behavior, Envelope, Next, Reply};
use crate::error::Result;
use crate::message::MessageKind;

/// Records, per message name:
/// - `catga_dispatch_total{message, kind, outcome}`: a counter; `outcome` is
///   `ok` or the error kind (`timeout`, `overloaded`, ...);
/// - `catga_dispatch_seconds{message, kind}`: a histogram of the time the
///   rest of the pipeline took (a histogram, so copies aggregate);
/// - `catga_in_flight{message}`: a gauge of dispatches running now.
///
/// Add it first (outermost) to see what callers see, retries included.
///
/// ```
/// # use catga_core::{Catga, behavior::metrics::Metrics};
/// let mediator = Catga::builder().behavior(Metrics).build()?;
/// # drop(mediator);
/// # Ok::<(), catga_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics;

impl Behavior for Metrics {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let message = env.name();
        let kind = match env.kind() {
            MessageKind::Request => "request",
            MessageKind::Event => "event",
        };
        let in_flight = metrics::gauge!("catga_in_flight", "message" => message);
        in_flight.increment(1.0);
        let started = std::time::Instant::now();
        let result = next.run(env).await;
        in_flight.decrement(1.0);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        metrics::counter!(
            "catga_dispatch_total",
            "message" => message,
            "kind" => kind,
            "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!("catga_dispatch_seconds", "message" => message, "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        result
    }
}
