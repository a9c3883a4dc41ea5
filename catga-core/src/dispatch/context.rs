//! What a handler knows about the message it handles.
//!
//! How it sends more through its context lives with the mediator's own
//! sending, in `mediator.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::dispatch::handle::Mediator;
use crate::error::Result;
use crate::message::{Event, Message};
use crate::metadata::{Headers, Metadata};
use crate::store::{OutboxRecord, UnitOfWork};

/// The context of one dispatch, given to handlers and behaviors.
///
/// Messages sent or published through a context continue its conversation: the
/// same correlation id, causation set to the current message id, the same
/// headers, and for requests the same deadline (events carry none).
///
/// Under the idempotency behavior with an outbox, events published through the
/// context are not sent at once: they are kept and written to the outbox
/// together with the handler's result, and only if the handler succeeds.
#[derive(Debug)]
pub struct Context {
    mediator: Mediator,
    meta: Metadata,
    name: &'static str,
    /// The current attempt's held-back events and staged writes: a new
    /// buffer per attempt, so a copy of this context made during one attempt
    /// (a task its handler spawned) can never add to the next one's.
    outbox: Mutex<Option<OutboxBuffer>>,
    work: Mutex<Option<WorkBuffer>>,
    /// Fingerprint of the payload as it arrived from a transport.
    fingerprint: Option<u64>,
}

impl Clone for Context {
    /// A copy that continues the same dispatch. The message id is fixed
    /// first (generated now if nothing asked for it yet), so the copy and the
    /// original (every handler of one publish, a task a handler spawned) see
    /// the same id; a dispatch that is never copied never pays for one.
    fn clone(&self) -> Self {
        self.meta.message_id();
        Context {
            mediator: self.mediator.clone(),
            meta: self.meta.clone(),
            name: self.name,
            outbox: Mutex::new(current(&self.outbox)),
            work: Mutex::new(current(&self.work)),
            fingerprint: self.fingerprint,
        }
    }
}

/// Events held back until the handler's result is stored; `None` once the
/// attempt that held them ended (what comes later cannot commit with it).
pub(crate) type OutboxBuffer = Arc<Mutex<Option<Vec<OutboxRecord>>>>;

/// Writes staged until the handler's result is stored; `None` once the
/// attempt that staged them ended.
pub(crate) type WorkBuffer = Arc<Mutex<Option<UnitOfWork>>>;

/// The buffer in `slot` now (a copy of its handle).
fn current<T>(slot: &Mutex<Option<Arc<T>>>) -> Option<Arc<T>> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Takes what an attempt held in `buffer` and closes it: whatever is held
/// later (a task the handler spawned, still running) is refused.
pub(crate) fn close<T>(buffer: &Mutex<Option<T>>) -> Option<T> {
    buffer.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The error of something held back after its attempt ended.
fn too_late(what: &str, name: &'static str) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Config,
        format!(
            "{what} after the handler of `{name}` returned (from a task it spawned?): it can no \
             longer commit with the handler's result; do it before the handler returns, or \
             through `ctx.mediator()` when it need not be atomic with the result"
        ),
    )
    .with_message_name(name)
}

impl Context {
    pub(crate) fn new(mediator: Mediator, meta: Metadata, name: &'static str) -> Self {
        Context {
            mediator,
            meta,
            name,
            outbox: Mutex::new(None),
            work: Mutex::new(None),
            fingerprint: None,
        }
    }

    /// With the fingerprint of `payload`, the bytes the message arrived in.
    pub(crate) fn with_payload(mut self, payload: &[u8]) -> Self {
        self.fingerprint = Some(crate::codec::fingerprint(payload));
        self
    }

    /// The fingerprint of the payload the message arrived in from a
    /// transport (`None` for a message sent in this process). Idempotency
    /// stores it with an outcome: a duplicate whose payload differs is
    /// refused, not given the first one's outcome.
    pub fn payload_fingerprint(&self) -> Option<u64> {
        self.fingerprint
    }

    /// Starts collecting staged writes for an attempt: anything an earlier
    /// attempt on this context staged (and did not commit) is dropped.
    pub(crate) fn hold_work(&self) -> WorkBuffer {
        let buffer = WorkBuffer::new(Mutex::new(Some(UnitOfWork::new())));
        *self.work.lock().unwrap_or_else(|p| p.into_inner()) = Some(buffer.clone());
        buffer
    }

    /// Stages `work` to commit with this handler's completion (see
    /// [`UnitOfWork`](crate::store::UnitOfWork)): its conditions are checked
    /// and its writes applied in the same atomic step that stores the
    /// handler's response and its events, or not at all. Stage as often as
    /// needed; everything staged commits together.
    ///
    /// Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) when nothing
    /// would commit it: the message's route has no idempotency behavior, or
    /// the handler's attempt has ended (a task it spawned stages too late).
    pub fn stage(&self, work: UnitOfWork) -> Result<()> {
        let Some(buffer) = current(&self.work) else {
            return Err(crate::Error::new(
                crate::ErrorKind::Config,
                format!(
                    "a handler of `{}` staged writes, but no idempotency behavior wraps it, so \
                     nothing would commit them: add `Idempotency` for this message type",
                    self.name
                ),
            )
            .with_message_name(self.name));
        };
        let mut staged = buffer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(staged) = staged.as_mut() else {
            return Err(too_late("writes were staged", self.name));
        };
        *staged = std::mem::take(staged).merge(work);
        Ok(())
    }

    /// Starts holding back events published through this context for an
    /// attempt: anything an earlier attempt on this context held (and did not
    /// commit) is dropped.
    pub(crate) fn hold_events(&self) -> OutboxBuffer {
        let buffer = OutboxBuffer::new(Mutex::new(Some(Vec::new())));
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(buffer.clone());
        buffer
    }

    /// The events held back for the outbox, when a behavior holds them.
    pub(crate) fn held_events(&self) -> Option<OutboxBuffer> {
        current(&self.outbox)
    }

    /// Holds `event` back in `buffer`, encoded as the outbox stores it.
    pub(crate) fn hold<E: Event>(
        &self,
        buffer: &OutboxBuffer,
        event: &E,
        meta: &Metadata,
    ) -> Result<()> {
        let mark = E::RELIABLE.then_some(crate::metadata::RELIABLE_HEADER);
        self.hold_message(buffer, event, meta, mark)
    }

    /// Holds a message back in `buffer`, with the header `mark` (what the
    /// relay does with it) when given.
    pub(crate) fn hold_message<M: Message>(
        &self,
        buffer: &OutboxBuffer,
        message: &M,
        meta: &Metadata,
        mark: Option<&'static str>,
    ) -> Result<()> {
        let format = self.mediator.format();
        let payload = format
            .encode_bytes(message)
            .map_err(|e| e.with_message_name(M::NAME))?;
        let record = OutboxRecord {
            name: M::NAME.to_owned(),
            payload,
            content_type: format.content_type().to_owned(),
            message_id: meta.message_id(),
            correlation_id: meta.correlation_id(),
            causation_id: meta.causation_id(),
            headers: meta
                .headers()
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .chain(mark.map(|h| (h.to_owned(), "true".to_owned())))
                .collect(),
        };
        match buffer.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(held) => held.push(record),
            None => return Err(too_late(&format!("`{}` was published", M::NAME), self.name)),
        }
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
}
