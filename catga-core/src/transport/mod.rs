//! Transports carry messages between peers.
//!
//! The mediator hands a [`Transport`] encoded [`WireMessage`]s: requests for which
//! this peer has no handler, and every published event. When started, a transport
//! delivers incoming messages to an [`Inbound`] (the mediator), which decodes them
//! by name and runs the local handlers.
//!
//! Semantics every transport provides (the NATS one across machines, the
//! [`memory`] one inside a process):
//! - a request goes to exactly one peer that handles its name; with no such peer
//!   the caller gets [`ErrorKind::NoHandler`](crate::ErrorKind::NoHandler) at once,
//!   with a slow one [`ErrorKind::Timeout`](crate::ErrorKind::Timeout);
//! - an event goes to one peer of every service that handles its name, never to
//!   the service that already handled it locally when publishing
//!   ([`WireMessage::handled_by`]).

pub mod memory;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::codec::Format;
use crate::error::Result;
use crate::metadata::{Headers, Metadata};

/// How long a request waits for its reply unless told otherwise (the builder's
/// `request_timeout` default). A transport may leave this value off the wire:
/// a request received without a timeout gets this one as its deadline.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A message on the wire: its name, encoded payload and metadata.
#[derive(Debug, Clone)]
pub struct WireMessage {
    /// Wire name (`Message::NAME`).
    pub name: Cow<'static, str>,
    /// Encoded message.
    pub payload: Bytes,
    /// Encoding of `payload`.
    pub format: Format,
    /// Message id.
    pub message_id: Uuid,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// Time the sender will still wait; the receiver turns it back into a
    /// deadline. On receipt, a transport that carries the sender's deadline
    /// sets what is left of it: `Some(Duration::ZERO)` when it passed before
    /// the message was taken from the transport's buffer (the receiver then
    /// answers with a timeout, code `catga.expired`, without handling it).
    pub timeout: Option<Duration>,
    /// Free headers.
    pub headers: Headers,
    /// For events: the service that already ran its handlers when publishing, so
    /// its other copies skip the event.
    pub handled_by: Option<String>,
    /// For events: the type is declared reliable (`Event::RELIABLE`), so a
    /// transport that can store events delivers it at least once.
    pub reliable: bool,
}

impl WireMessage {
    /// A wire message for `name` with ids and headers taken from `meta`.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        payload: impl Into<Bytes>,
        format: Format,
        meta: &Metadata,
    ) -> Self {
        WireMessage {
            name: name.into(),
            payload: payload.into(),
            format,
            message_id: meta.message_id(),
            correlation_id: meta.correlation_id(),
            causation_id: meta.causation_id(),
            timeout: meta.remaining(),
            headers: meta.headers().clone(),
            handled_by: None,
            reliable: false,
        }
    }

    /// The metadata a receiving handler sees.
    pub fn metadata(&self) -> Metadata {
        let mut meta = Metadata::new()
            .with_message_id(self.message_id)
            .with_correlation_id(self.correlation_id);
        if let Some(c) = self.causation_id {
            meta = meta.with_causation_id(c);
        }
        if let Some(t) = self.timeout {
            meta = meta.with_timeout(t);
        }
        *meta.headers_mut() = self.headers.clone();
        meta
    }
}

/// The successful reply to a request on the wire.
#[derive(Debug, Clone)]
pub struct WireReply {
    /// Encoded response.
    pub payload: Bytes,
    /// Encoding of `payload`.
    pub format: Format,
}

/// What a starting peer serves.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Service name: copies of one service share events.
    pub service: String,
    /// Unique id of this peer.
    pub peer_id: Uuid,
    /// Request names this peer handles.
    pub requests: Vec<&'static str>,
    /// Event names this peer handles.
    pub events: Vec<&'static str>,
    /// Those of `events` whose type is declared reliable (`Event::RELIABLE`):
    /// a transport that can store events serves them from its store.
    pub reliable_events: Vec<&'static str>,
    /// Those of `requests` declared durable (`Request::DURABLE`): a
    /// transport that stores commands serves them from its store too.
    pub durable_requests: Vec<&'static str>,
}

/// Receives messages a transport delivers to this peer (implemented by the mediator).
pub trait Inbound: Send + Sync + 'static {
    /// Handles an incoming request and returns the reply or the error to send back.
    ///
    /// The message's `timeout` is its deadline, counted from now; `None` is
    /// none at all (a stored command, handled whenever it is delivered). A
    /// transport that receives live requests without a timeout gives them its
    /// default ([`DEFAULT_REQUEST_TIMEOUT`]) before handing them in.
    fn request(&self, message: WireMessage) -> BoxFuture<'static, Result<WireReply>>;
    /// Handles an incoming event.
    fn event(&self, message: WireMessage) -> BoxFuture<'static, Result<()>>;
}

/// Moves messages between peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends a request to one peer that handles its name and waits up to `timeout`
    /// for the reply. A handler error on the other side comes back as an `Err` with
    /// its kind and code.
    fn request(&self, message: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>>;

    /// Hands an event to every other service that handles it.
    fn publish(&self, message: WireMessage) -> BoxFuture<'_, Result<()>>;

    /// Stores a command for the service that handles it, which takes it when
    /// it can (at least once, with redelivery and dead letters); returns once
    /// it is stored. The default: this transport cannot store commands.
    fn send_durable(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Err(crate::Error::new(
            crate::ErrorKind::Config,
            format!(
                "`{}` was sent durably, but this transport cannot store commands",
                message.name
            ),
        ))))
    }

    /// Starts delivering this peer's messages to `inbound`.
    fn start(&self, peer: PeerSpec, inbound: Arc<dyn Inbound>) -> BoxFuture<'_, Result<()>>;

    /// Stops taking new messages, waits for those in flight, and disconnects.
    fn shutdown(&self) -> BoxFuture<'_, Result<()>>;

    /// Waits until what was published so far has reached the server (the
    /// outbox relay acknowledges entries only then). The default: nothing
    /// to wait for.
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether this transport can carry and serve messages now; the reason
    /// when not (disconnected, a subscription that stopped serving). For
    /// readiness probes; the default is always ready.
    fn ready(&self) -> Result<()> {
        Ok(())
    }
}

impl fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Transport")
    }
}

/// A shared transport is a transport: pass `Arc<T>` (or `Arc<dyn Transport>`).
impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn request(&self, message: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>> {
        (**self).request(message, timeout)
    }

    fn publish(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        (**self).publish(message)
    }

    fn send_durable(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        (**self).send_durable(message)
    }

    fn start(&self, peer: PeerSpec, inbound: Arc<dyn Inbound>) -> BoxFuture<'_, Result<()>> {
        (**self).start(peer, inbound)
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<()>> {
        (**self).shutdown()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        (**self).flush()
    }

    fn ready(&self) -> Result<()> {
        (**self).ready()
    }
}
