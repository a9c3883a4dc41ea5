//! Serving core NATS subscriptions: requests, and events delivered at most once.
//!
//! Each request or event name is served by several subscriptions in one queue
//! group (as many as the runtime has worker threads, see
//! [`NatsOptions::serving_tasks`](crate::NatsOptions::serving_tasks)), each read
//! by a task of its own: the NATS server spreads a hot name's messages over
//! them, and the runtime runs them on every core. A task runs its messages'
//! handlers concurrently, without a spawn per message.
//!
//! What a task does with a message, in order:
//! 1. admission (see [`admission`](crate::admission)): a request over a limit is
//!    answered `overloaded` at once; an event waits (the task stops reading
//!    while its name or the peer is at its limit);
//! 2. the deadline: a message that arrived past it is answered with a timeout
//!    (a request) or dropped (an event), without running a handler;
//! 3. the handler, with any panic in decoding or handling turned into an error
//!    reply; the subscription keeps serving.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use catga_core::transport::{DEFAULT_REQUEST_TIMEOUT, Inbound, WireMessage, WireReply};
use catga_core::{Error, ErrorKind, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::{Full, Gauge, Peer, Permit};
use crate::protocol;
use crate::shared::Shared;

/// What a serving task needs besides its subscription.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inbound: Arc<dyn Inbound>,
    pub(crate) name: &'static str,
    /// The gauge of this name's subscriptions (shared by its tasks).
    pub(crate) gauge: Arc<Gauge>,
}

impl Serving {
    fn peer(&self) -> &Arc<Peer> {
        &self.shared.peer
    }
}

/// Counts a subscription that stops serving while the peer runs (its
/// connection closed for good, or a bug panicked its task): the peer is not
/// ready while one is dead.
struct Liveness {
    peer: Arc<Peer>,
    shutdown: CancellationToken,
    name: &'static str,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            self.peer.dead_subscriptions.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                message = self.name,
                "a NATS subscription stopped serving; this peer is no longer ready"
            );
        }
    }
}

/// How a task reads its subscription.
#[derive(Clone, Copy)]
pub(crate) enum Reading {
    /// Always: what is over the limits is answered at once (requests).
    Always,
    /// While its name's and the peer's gauges have room (events).
    WhileRoom,
}

/// Reads a core subscription and handles what it delivers on this task; on
/// shutdown, drains the subscription and still handles what was delivered.
pub(crate) async fn serve_core<Fut>(
    mut sub: Subscriber,
    shutdown: CancellationToken,
    serving: Serving,
    reading: Reading,
    handle: fn(&Serving, async_nats::Message) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let _alive = Liveness {
        peer: serving.peer().clone(),
        shutdown: shutdown.clone(),
        name: serving.name,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    // Made once: a fresh `cancelled()` per pass would register and drop a
    // waiter on the token for every message.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let room = match reading {
            Reading::Always => true,
            Reading::WhileRoom => !serving.gauge.is_full() && !serving.peer().gauge.is_full(),
        };
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            () = &mut cancelled, if open => {
                open = false;
                if let Err(e) = sub.drain().await {
                    tracing::warn!(error = %e, "could not drain a NATS subscription");
                }
            }
            msg = sub.next(), if room => match msg {
                Some(m) => in_flight.push(handle(&serving, m)),
                None => break,
            },
            // Full: room may come from another task's messages; look again.
            () = tokio::time::sleep(Duration::from_millis(5)), if !room => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// The span a received message is handled in: its name, ids and trace context.
/// Field values are only formatted when a subscriber records the span. With the
/// `otel` feature, a `traceparent` sent by the caller is the span's parent.
pub(crate) fn receive_span(name: &str, wire: &Result<WireMessage>) -> tracing::Span {
    match wire {
        Ok(w) => {
            // The caller's trace, as the span's parent from its creation.
            #[cfg(feature = "otel")]
            let _parent = crate::otel::attach_remote_parent(&w.headers);
            // OpenTelemetry messaging conventions: a consumer span that
            // processes one NATS message.
            let span = tracing::info_span!(
                "catga.receive",
                message = name,
                message_id = %w.message_id,
                correlation_id = %w.correlation_id,
                traceparent = %protocol::Traceparent(w),
                "otel.kind" = "consumer",
                "messaging.system" = "nats",
                "messaging.operation.type" = "process",
                "messaging.destination.name" = name,
                "messaging.message.id" = %w.message_id,
                "messaging.message.conversation_id" = %w.correlation_id,
            );
            span
        }
        Err(_) => tracing::info_span!("catga.receive", message = name),
    }
}

/// The answer to a request over a limit.
#[cold]
fn overloaded(name: &str, full: Full, peer: &Peer, gauge: &Gauge) -> Error {
    let what = match full {
        Full::Subscription => format!(
            "its limit for `{name}` ({} messages, {} bytes in flight)",
            gauge.messages(),
            gauge.bytes()
        ),
        Full::Peer => format!(
            "its limit ({} messages, {} bytes in flight)",
            peer.gauge.messages(),
            peer.gauge.bytes()
        ),
    };
    Error::new(
        ErrorKind::Overloaded,
        format!("the peer is at {what}; try again (another copy may take it)"),
    )
    .with_code("catga.overloaded")
    .with_message_name(name.to_owned())
    .with_retryable(true)
}

/// The answer to a message that arrived past its deadline (counted).
#[cold]
fn expired(name: &'static str, peer: &Peer) -> Error {
    peer.expired.fetch_add(1, Ordering::Relaxed);
    Error::expired(name)
}

/// The error a panic in decoding or handling becomes.
#[cold]
fn panicked(name: &str, peer: &Peer, panic: &(dyn std::any::Any + Send)) -> Error {
    peer.panicked.fetch_add(1, Ordering::Relaxed);
    let why = catga_core::panic_message(panic);
    tracing::error!(message = name, panic = %why, "handling a message panicked");
    Error::handler(
        "catga.panic",
        format!("handling `{name}` panicked: {why}; the peer keeps serving"),
    )
    .with_message_name(name.to_owned())
    .with_retryable(false)
}

/// Hands a message to the mediator, turning a panic (when the handling
/// starts, or while it runs) into an error, and records what the handling
/// came to on the name's gauge (the service API's endpoint stats).
fn guarded<T: Send + 'static>(
    serving: &Serving,
    start: impl FnOnce() -> BoxFuture<'static, Result<T>>,
) -> BoxFuture<'static, Result<T>> {
    let (name, peer, gauge) = (serving.name, serving.peer().clone(), serving.gauge.clone());
    let started = std::time::Instant::now();
    let handling = match std::panic::catch_unwind(AssertUnwindSafe(start)) {
        Ok(handling) => handling,
        Err(p) => Box::pin(std::future::ready(Err(panicked(name, &peer, &*p)))),
    };
    Box::pin(AssertUnwindSafe(handling).catch_unwind().map(move |r| {
        let result = r.unwrap_or_else(|p| Err(panicked(name, &peer, &*p)));
        gauge.record(started.elapsed(), result.as_ref().err());
        result
    }))
}

/// Handles one request and sends the reply. What can be done before the
/// handler runs is done here, outside the returned future, which every request
/// allocates (in a `FuturesUnordered` slot): it stays small enough for the
/// allocator's per-thread cache.
pub(crate) fn serve_request(
    serving: &Serving,
    msg: async_nats::Message,
) -> impl Future<Output = ()> + Send + use<> {
    let (name, peer) = (serving.name, serving.peer());
    let admitted = peer.admit(&serving.gauge, msg.payload.len());
    let (handling, span, permit): (_, _, Option<Permit>) = match admitted {
        Err(full) => {
            let e = overloaded(name, full, peer, &serving.gauge);
            let handling: BoxFuture<'static, Result<WireReply>> =
                Box::pin(std::future::ready(Err(e)));
            (handling, tracing::Span::none(), None)
        }
        Ok(permit) => {
            let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload);
            let span = receive_span(name, &wire);
            let handling = match wire {
                Ok(wire) if wire.timeout == Some(Duration::ZERO) => {
                    Box::pin(std::future::ready(Err(expired(name, peer))))
                }
                Ok(mut wire) => {
                    // No deadline on the wire (a client that sets none): the
                    // default one, from receipt.
                    wire.timeout.get_or_insert(DEFAULT_REQUEST_TIMEOUT);
                    let inbound = &serving.inbound;
                    span.in_scope(|| guarded(serving, || inbound.request(wire)))
                }
                Err(e) => Box::pin(std::future::ready(Err(e))),
            };
            (handling, span, Some(permit))
        }
    };
    let client = serving.shared.client.clone();
    let reply_to = msg.reply;
    async move {
        let Some(reply_to) = reply_to else {
            tracing::warn!(
                message = name,
                "request without a reply subject; nothing to answer"
            );
            return;
        };
        let (headers, payload) = reply(&client, name, handling.await);
        // Empty headers go out as a plain PUB.
        let sent = client
            .publish_with_headers(reply_to, headers.unwrap_or_default(), payload)
            .await;
        drop(permit);
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not send the reply; the caller will time out");
        }
    }
    .instrument(span)
}

/// The reply to a handled request: the response, or the error, or an error
/// saying the response is too large for the server.
fn reply(
    client: &Client,
    name: &str,
    result: Result<WireReply>,
) -> (Option<async_nats::HeaderMap>, Bytes) {
    let reply = match result {
        Ok(reply) => protocol::reply_ok(reply),
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            let (h, p) = protocol::reply_err(&e);
            (Some(h), p)
        }
    };
    // Headers count towards max_payload too. The limit is the server's of the
    // current connection (it may change on reconnect).
    let max_payload = client.max_payload();
    let headers = reply.0.as_ref().map_or(0, protocol::header_bytes);
    if reply.1.len() + headers <= max_payload {
        return reply;
    }
    tracing::warn!(
        bytes = reply.1.len(),
        "the reply is over the server's max_payload"
    );
    let (h, p) = protocol::reply_err(
        &Error::transport(format!(
            "the reply to `{name}` is {} bytes, over the NATS server's max_payload ({}); \
             reply with a reference to the data instead, or raise max_payload",
            reply.1.len(),
            max_payload
        ))
        .with_retryable(false),
    );
    (Some(h), p)
}

/// Handles one core event (prepared outside the future, as for requests). An
/// event is never turned away (it cannot be answered): its task stops reading
/// at its limit instead, and the peer's gauge counts it.
pub(crate) fn serve_event(
    serving: &Serving,
    msg: async_nats::Message,
) -> impl Future<Output = ()> + Send + use<> {
    let (name, peer) = (serving.name, serving.peer());
    let permit = peer.hold(&serving.gauge, msg.payload.len());
    let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload);
    let span = receive_span(name, &wire);
    let handling = match wire {
        Ok(wire) if wire.timeout == Some(Duration::ZERO) => {
            Box::pin(std::future::ready(Err(expired(name, peer))))
        }
        Ok(wire) => {
            let inbound = &serving.inbound;
            span.in_scope(|| guarded(serving, || inbound.event(wire)))
        }
        Err(e) => Box::pin(std::future::ready(Err(e))),
    };
    async move {
        if let Err(e) = handling.await {
            tracing::warn!(error = %e, "event handling failed (core events are not redelivered)");
        }
        drop(permit);
    }
    .instrument(span)
}
