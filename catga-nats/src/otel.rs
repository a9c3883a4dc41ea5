//! OpenTelemetry trace context across NATS (feature `otel`).
//!
//! Sending: the current `tracing` span's OpenTelemetry context is written into
//! the message's headers by the application's global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`): with the W3C
//! propagators, `traceparent`, `tracestate` and `baggage`; with another, its
//! own headers. With no propagator installed, Catga writes `traceparent`
//! itself. Receiving: the same propagator reads them back, and the context
//! (its baggage included) becomes the remote parent of the `catga.receive`
//! span the handler runs in, so with a tracing-opentelemetry layer
//! installed the handler's spans continue the caller's trace.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use catga_core::Headers;

/// Writes propagator fields into Catga headers.
struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// Reads propagator fields from Catga headers (names in any case).
struct Extract<'a>(&'a Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

/// Writes the current span's context into `headers` (see the module docs);
/// nothing when the current span has no valid OpenTelemetry context.
pub(crate) fn inject(headers: &mut Headers) {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let before = headers.len();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
    // The default global propagator writes nothing: Catga's own traceparent.
    if headers.len() == before {
        if let Some(tp) = current_traceparent() {
            headers.insert(crate::protocol::header::TRACEPARENT, tp);
        }
    }
}

/// The current span's context as a W3C `traceparent`, when it has a valid one
/// (an OpenTelemetry layer is installed and the span is recorded).
pub(crate) fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes the context carried by `headers` the current OpenTelemetry context
/// until the guard drops, so a span created meanwhile has it as its remote
/// parent (from creation, so its sampling decision and `tracestate` follow
/// the parent's). Read by the global propagator (baggage included), or from
/// `traceparent` alone when that finds none; `None` when there is none (a
/// malformed value is ignored: the span then starts a trace of its own).
pub(crate) fn attach_remote_parent(headers: &Headers) -> Option<opentelemetry::ContextGuard> {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
    if cx.span().span_context().is_valid() {
        return Some(cx.attach());
    }
    let sc = headers
        .get(crate::protocol::header::TRACEPARENT)
        .and_then(parse)?;
    Some(cx.with_remote_span_context(sc).attach())
}

/// Parses `version-traceid-parentid-flags` (W3C Trace Context, level 1).
pub(crate) fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_traceparents_and_rejects_malformed_ones() {
        let sc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x").is_some());
    }

    #[test]
    fn no_opentelemetry_layer_means_no_traceparent() {
        let _span = tracing::info_span!("plain").entered();
        assert_eq!(current_traceparent(), None);
    }
}
