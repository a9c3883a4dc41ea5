//! What leaves a peer: requests and events, with their headers, subjects
//! and the current trace context.

use std::borrow::Cow;
use std::sync::RwLock;
use std::time::Duration;

use async_nats::{RequestErrorKind, Subject};
use catga_core::transport::{WireMessage, WireReply};
use catga_core::{Error, ErrorKind, Result};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::protocol;
use crate::shared::{Shared, SubjectCache, transport_error};

impl Shared {
    /// The subject `make` builds for `name`, from `cache` when the name is
    /// static (hence the `Cow`: only a borrowed `'static` name can key it).
    #[allow(clippy::ptr_arg)]
    fn subject(
        &self,
        cache: &RwLock<SubjectCache>,
        make: fn(&str, &str) -> String,
        name: &Cow<'static, str>,
    ) -> Subject {
        let &Cow::Borrowed(name) = name else {
            return make(self.prefix(), name).into();
        };
        let cached = cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        cached.unwrap_or_else(|| {
            let subject: Subject = make(self.prefix(), name).into();
            cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, subject.clone());
            subject
        })
    }

    /// The NATS headers (with the current trace context) and the subject of an
    /// outgoing message.
    fn outgoing(
        &self,
        msg: &mut WireMessage,
        cache: &RwLock<SubjectCache>,
        make: fn(&str, &str) -> String,
    ) -> Result<(async_nats::HeaderMap, Subject)> {
        with_current_trace(msg);
        let headers =
            protocol::to_headers(msg).map_err(|e| e.with_message_name(msg.name.clone()))?;
        Ok((headers, self.subject(cache, make, &msg.name)))
    }

    /// Sends a request. The headers, subject and payload are prepared before the
    /// returned future exists, so the future holds little beyond async-nats's
    /// own (it is boxed for every request: its size is an allocation's size).
    pub(crate) fn request(
        &self,
        mut msg: WireMessage,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<WireReply>> {
        let (headers, subject) =
            match self.outgoing(&mut msg, &self.request_subjects, protocol::request_subject) {
                Ok(prepared) => prepared,
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            };
        let WireMessage { name, payload, .. } = msg;
        let size = payload.len();
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(timeout));
        // `map`, not an async block: one awaiting a captured future stores it twice.
        Box::pin(
            self.client
                .send_request(subject, request)
                .map(move |sent| match sent {
                    Ok(reply) => {
                        protocol::parse_reply(&name, reply.headers.as_ref(), reply.payload)
                    }
                    Err(e) => Err(self.request_error(name, size, timeout, e)),
                }),
        )
    }

    /// The error of a request that got no reply. Off the hot path: builds the
    /// subject again for the message rather than keeping it in the future.
    #[cold]
    fn request_error(
        &self,
        name: Cow<'static, str>,
        size: usize,
        timeout: Duration,
        e: async_nats::RequestError,
    ) -> Error {
        let subject = || protocol::request_subject(self.prefix(), &name);
        match e.kind() {
            RequestErrorKind::NoResponders => Error::new(
                ErrorKind::NoHandler,
                format!(
                    "no peer handles `{name}` (no responders on `{}`); start a peer \
                     with a handler for it",
                    subject()
                ),
            ),
            RequestErrorKind::TimedOut => Error::timeout(&name, timeout),
            RequestErrorKind::MaxPayloadExceeded => Error::new(
                ErrorKind::Transport,
                format!(
                    "`{name}` is {size} bytes, over the NATS server's max_payload; send a \
                     reference to the data instead, or raise max_payload"
                ),
            )
            .with_retryable(false),
            _ => transport_error(format!("request `{name}` on `{}` failed: {e}", subject())),
        }
        .with_message_name(name)
    }

    /// Stores a durable command in the commands work queue and waits for the
    /// stream's ack (`Nats-Msg-Id` is the message id and the payload's
    /// fingerprint: a re-sent command is stored once within the duplicate
    /// window, one reusing the id with other bytes is stored too).
    pub(crate) async fn send_durable(&self, mut msg: WireMessage) -> Result<()> {
        msg.timeout = None;
        with_current_trace(&mut msg);
        let headers =
            protocol::to_headers(&msg).map_err(|e| e.with_message_name(msg.name.clone()))?;
        let subject = protocol::command_subject(self.prefix(), &msg.name);
        self.publish_reliable(msg, subject.into(), headers).await
    }

    /// Publishes an event: on core NATS, or through JetStream when its type is
    /// reliable. As with requests, the core future holds only async-nats's own.
    pub(crate) fn publish(&self, mut msg: WireMessage) -> BoxFuture<'_, Result<()>> {
        let reliable = self.is_reliable(&msg.name, msg.reliable);
        let (cache, subject): (_, fn(&str, &str) -> String) = if reliable {
            // A stored event is worth handling whenever it is delivered: it
            // carries no deadline that would make its redeliveries expire.
            msg.timeout = None;
            (&self.reliable_subjects, protocol::reliable_subject)
        } else {
            (&self.event_subjects, protocol::event_subject)
        };
        let (headers, subject) = match self.outgoing(&mut msg, cache, subject) {
            Ok(prepared) => prepared,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if reliable {
            return Box::pin(self.publish_reliable(msg, subject, headers));
        }
        let WireMessage { name, payload, .. } = msg;
        let size = payload.len();
        Box::pin(
            self.client
                .publish_with_headers(subject, headers, payload)
                .map(move |sent| {
                    sent.map_err(|e| {
                        let subject = protocol::event_subject(self.prefix(), &name);
                        if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                            // Sending it again cannot help: an outbox relay
                            // dead-letters it instead of stalling on it.
                            let why = format!("{size} bytes is over the server's max_payload");
                            return Shared::publish_error(name, &subject, why)
                                .with_retryable(false);
                        }
                        Shared::publish_error(name, &subject, e.to_string())
                    })
                }),
        )
    }

    #[cold]
    pub(crate) fn publish_error(name: Cow<'static, str>, subject: &str, why: String) -> Error {
        transport_error(format!("could not publish `{name}` on `{subject}`: {why}"))
            .with_message_name(name)
    }
}

/// With the `otel` feature: the current span's OpenTelemetry context goes
/// into the message's headers (see `otel::inject`), over what it inherited
/// from an incoming message.
fn with_current_trace(msg: &mut WireMessage) {
    #[cfg(feature = "otel")]
    crate::otel::inject(&mut msg.headers);
    #[cfg(not(feature = "otel"))]
    let _ = msg;
}
