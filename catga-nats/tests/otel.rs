//! With the `otel` feature, a handler's span continues the caller's
//! OpenTelemetry trace across NATS. Run with
//! `cargo test -p catga-nats --features otel --test otel`.

use catga_core::{Catga, Message, Request};
use catga_nats::{NatsOptions, NatsTransport};
use catga_test_support::NatsServer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}
impl Message for Add {
    const NAME: &'static str = "otel.Add";
}
impl Request for Add {
    type Response = i64;
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` among {:?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_ref()).collect()
}

// Current-thread runtime: the subscriber below is this thread's default, and
// every task (both peers, both NATS connections) runs on this thread.
#[tokio::test]
async fn the_handlers_span_continues_the_callers_trace_across_nats() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("catga-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = NatsServer::start();
    let connect = || async {
        NatsTransport::connect(NatsOptions::new([server.url()]))
            .await
            .unwrap()
    };
    let peer = Catga::builder()
        .service("calc")
        .transport(connect().await)
        .request_fn(|a: Add, _| async move {
            tracing::info_span!("handler.work").in_scope(|| Ok(a.a + a.b))
        })
        .start()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("gateway")
        .transport(connect().await)
        .build()
        .unwrap();

    let root = tracing::info_span!("client.operation");
    let sum = client
        .send(Add { a: 40, b: 2 })
        .instrument(root.clone())
        .await
        .unwrap();
    assert_eq!(sum, 42);
    drop(root);
    // Without a caller span, the receiving side starts a trace of its own.
    assert_eq!(client.send(Add { a: 1, b: 1 }).await.unwrap(), 2);
    peer.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let caller = find(&spans, "client.operation");
    let received: Vec<&SpanData> = spans.iter().filter(|s| s.name == "catga.receive").collect();
    assert_eq!(received.len(), 2, "{:?}", names(&spans));
    let continued = received
        .iter()
        .find(|s| s.span_context.trace_id() == caller.span_context.trace_id())
        .expect("the receive span is in the caller's trace");
    assert_eq!(continued.parent_span_id, caller.span_context.span_id());
    assert!(continued.parent_span_is_remote);
    let work = spans
        .iter()
        .find(|s| s.name == "handler.work" && s.parent_span_id == continued.span_context.span_id())
        .expect("the handler's own span is a child of the receive span");
    assert_eq!(work.span_context.trace_id(), caller.span_context.trace_id());
    let alone = received
        .iter()
        .find(|s| s.span_context.trace_id() != caller.span_context.trace_id())
        .unwrap();
    assert!(!alone.parent_span_is_remote);
}
