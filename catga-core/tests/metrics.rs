//! The framework's metrics (feature `metrics`), read back from a Prometheus
//! recorder: dispatch counts by outcome, a histogram, in-flight, and a
//! peer's leader and retry gauges. (Its own binary: it installs the global
//! recorder.)

use std::time::Duration;

use catga_core::behavior::metrics::Metrics;
use catga_core::{Catga, Error, Message, Request};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    fail: bool,
}
impl Message for Charge {
    const NAME: &'static str = "metrics.Charge";
}
impl Request for Charge {
    type Response = ();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_and_peer_state_are_recorded() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    let peer = Catga::builder()
        .behavior(Metrics)
        .saga(catga_core::saga::Saga::<u32>::new("metrics.saga"))
        .leader_task("metrics.job", |ctx| async move {
            ctx.cancelled().await;
            Ok(())
        })
        .request_fn(|c: Charge, _| async move {
            if c.fail {
                Err(Error::validation("declined"))
            } else {
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    peer.send(Charge { fail: false }).await.unwrap();
    peer.send(Charge { fail: false }).await.unwrap();
    peer.send(Charge { fail: true }).await.unwrap_err();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while peer.leading().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peer.record_metrics().await;
    let text = handle.render();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
            .to_owned()
    };
    assert!(
        line(r#"catga_dispatch_total{message="metrics.Charge",kind="request",outcome="ok"}"#)
            .ends_with(" 2")
    );
    assert!(
        line(
            r#"catga_dispatch_total{message="metrics.Charge",kind="request",outcome="validation"}"#
        )
        .ends_with(" 1")
    );
    line(r#"catga_dispatch_seconds_count{message="metrics.Charge",kind="request"}"#);
    assert!(line(r#"catga_in_flight{message="metrics.Charge"}"#).ends_with(" 0"));
    assert!(line(r#"catga_leader{task="metrics.job"}"#).ends_with(" 1"));
    line("catga_retry_denied_total");
    assert!(line(r#"catga_sagas_unfinished{saga="metrics.saga"}"#).ends_with(" 0"));
    assert!(line(r#"catga_sagas_failed{saga="metrics.saga"}"#).ends_with(" 0"));
    // The leader gauge returns to 0 when the peer no longer leads.
    peer.shutdown().await.unwrap();
    peer.record_metrics().await;
    let text = handle.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"catga_leader{task="metrics.job"}"#) && l.ends_with(" 0")),
        "{text}"
    );
}
