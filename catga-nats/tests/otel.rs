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

/// With the application's W3C propagators installed, `tracestate` and
/// `baggage` travel too, and the receive span carries the OpenTelemetry
/// messaging attributes.
#[tokio::test]
async fn tracestate_and_baggage_travel_through_the_global_propagator() {
    use opentelemetry::KeyValue;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::propagation::TextMapCompositePropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
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
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let s = seen.clone();
    let peer = Catga::builder()
        .service("calc")
        .transport(connect().await)
        .request_fn(move |a: Add, _| {
            let s = s.clone();
            async move {
                let cx = tracing::Span::current().context();
                if let Some(v) = cx.baggage().get("tenant") {
                    *s.lock().unwrap() = Some(v.to_string());
                }
                Ok(a.a + a.b)
            }
        })
        .start()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("gateway")
        .transport(connect().await)
        .build()
        .unwrap();

    // The caller continues a remote trace and carries baggage: both go
    // out through the propagator.
    let remote = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let parent = opentelemetry::Context::new()
        .with_remote_span_context(remote)
        .with_baggage([KeyValue::new("tenant", "acme")]);
    let root = tracing::info_span!("client.operation");
    let _ = root.set_parent(parent);
    let sum = client
        .send(Add { a: 2, b: 3 })
        .instrument(root.clone())
        .await
        .unwrap();
    assert_eq!(sum, 5);
    drop(root);
    // A client in another language sends `tracestate` with its
    // `traceparent`: the propagator reads both.
    let mut meta = catga_core::Metadata::new();
    meta.headers_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    meta.headers_mut().insert("tracestate", "vendor=x1");
    assert_eq!(client.send_with(Add { a: 1, b: 1 }, meta).await.unwrap(), 2);
    peer.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    assert_eq!(
        seen.lock().unwrap().as_deref(),
        Some("acme"),
        "baggage arrived"
    );
    let spans = exporter.get_finished_spans().unwrap();
    let in_trace = |hex: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == "catga.receive"
                    && s.span_context.trace_id() == TraceId::from_hex(hex).unwrap()
            })
            .unwrap_or_else(|| panic!("no receive span in trace {hex}: {:?}", names(&spans)))
    };
    let received = in_trace("4bf92f3577b34da6a3ce929d0e0e4736");
    let foreign = in_trace("0af7651916cd43dd8448eb211c80319c");
    assert_eq!(foreign.span_context.trace_state().get("vendor"), Some("x1"));
    assert!(foreign.parent_span_is_remote);
    assert_eq!(received.span_kind, opentelemetry::trace::SpanKind::Consumer);
    let attr = |k: &str| {
        received
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr("messaging.system").as_deref(), Some("nats"));
    assert_eq!(attr("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(
        attr("messaging.destination.name").as_deref(),
        Some("otel.Add")
    );
}
