//! What a handler knows about the message it handles, and how it sends more.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::error::Result;
use crate::mediator::Mediator;
use crate::message::{Event, Request};
use crate::metadata::{Headers, Metadata};
use crate::store::OutboxRecord;

/// The context of one dispatch, given to handlers and behaviors.
///
/// Messages sent or published through a context continue its conversation: the
/// same correlation id, causation set to the current message id, the same
/// deadline and headers.
///
/// Under the idempotency behavior with an outbox, events published through the
/// context are not sent at once: they are kept and written to the outbox
/// together with the handler's result, and only if the handler succeeds.
#[derive(Debug, Clone)]
pub struct Context {
    mediator: Mediator,
    meta: Metadata,
    name: &'static str,
    outbox: OnceLock<OutboxBuffer>,
}

/// Events held back until the handler's result is stored.
pub(crate) type OutboxBuffer = Arc<Mutex<Vec<OutboxRecord>>>;

impl Context {
    pub(crate) fn new(mediator: Mediator, meta: Metadata, name: &'static str) -> Self {
        Context {
            mediator,
            meta,
            name,
            outbox: OnceLock::new(),
        }
    }

    /// Starts holding back events published through this context; `None` when
    /// something already does (the outer holder then writes them).
    pub(crate) fn hold_events(&self) -> Option<OutboxBuffer> {
        let buffer = OutboxBuffer::default();
        self.outbox.set(buffer.clone()).ok().map(|()| buffer)
    }

    fn hold<E: Event>(&self, buffer: &OutboxBuffer, event: &E, meta: &Metadata) -> Result<()> {
        let format = self.mediator.format();
        let payload = format
            .encode_bytes(event)
            .map_err(|e| e.with_message_name(E::NAME))?;
        let record = OutboxRecord {
            name: E::NAME.to_owned(),
            payload,
            content_type: format.content_type().to_owned(),
            message_id: meta.message_id(),
            correlation_id: meta.correlation_id(),
            causation_id: meta.causation_id(),
            headers: meta
                .headers()
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        };
        buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
        Ok(())
    }

    /// Wire name of the message being handled.
    pub fn message_name(&self) -> &'static str {
        self.name
    }

    /// The message id (generated on first use when the caller set none).
    pub fn message_id(&self) -> Uuid {
        self.meta.message_id()
    }

    /// The correlation id of the conversation.
    pub fn correlation_id(&self) -> Uuid {
        self.meta.correlation_id()
    }

    /// The id of the message that caused this one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.meta.causation_id()
    }

    /// The deadline of this dispatch, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.meta.deadline()
    }

    /// Time left before the deadline, if any.
    pub fn remaining(&self) -> Option<Duration> {
        self.meta.remaining()
    }

    /// The fence of the leader that sent this message, if a leader did (see
    /// [`Fence`](crate::Fence)); pass it to stores that reject stale fences.
    pub fn fence(&self) -> Option<crate::metadata::Fence> {
        self.meta.fence()
    }

    /// Headers of the message.
    pub fn headers(&self) -> &Headers {
        self.meta.headers()
    }

    /// All metadata of the message.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// A value shared through the builder's `.resource(..)` (a database pool, a
    /// configuration): the way handlers get state.
    pub fn resource<T: Send + Sync + 'static>(&self) -> Result<&T> {
        self.mediator.resource::<T>()
    }

    /// The mediator that dispatched this message.
    pub fn mediator(&self) -> &Mediator {
        &self.mediator
    }

    /// Sends a request as a consequence of the current message.
    pub async fn send<R: Request>(&self, request: R) -> Result<R::Response> {
        self.mediator.send_with(request, self.meta.child()).await
    }

    /// Like [`Context::send`], with per-call metadata (values set there win).
    pub async fn send_with<R: Request>(&self, request: R, meta: Metadata) -> Result<R::Response> {
        self.mediator
            .send_with(request, self.meta.child().overridden_by(meta))
            .await
    }

    /// Publishes an event as a consequence of the current message.
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        let meta = self.meta.child();
        match self.outbox.get() {
            Some(buffer) => self.hold(buffer, &event, &meta),
            None => self.mediator.publish_with(event, meta).await,
        }
    }

    /// Like [`Context::publish`], with per-call metadata (values set there win).
    pub async fn publish_with<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let meta = self.meta.child().overridden_by(meta);
        match self.outbox.get() {
            Some(buffer) => self.hold(buffer, &event, &meta),
            None => self.mediator.publish_with(event, meta).await,
        }
    }
}
