//! What the mediator does: send a request to its one handler, publish an
//! event to every handler, here or through the transport; and the same from
//! a handler's [`Context`], continuing its conversation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::Format;
use crate::dispatch::context::Context;
use crate::dispatch::handle::Mediator;
use crate::dispatch::route::{
    EventRoute, RequestRoute, downcast_route, event_route, guarded, internal,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Request};
use crate::metadata::Metadata;
use crate::store::OutboxRecord;
use crate::transport::{Transport, WireMessage, WireReply};

impl Mediator {
    /// Sends `request` to its handler and returns the response.
    ///
    /// Errors: [`ErrorKind::NoHandler`] when no handler exists here and no peer
    /// answers; otherwise whatever the handler, a behavior or the transport returned.
    pub fn send<R: Request>(
        &self,
        request: R,
    ) -> impl Future<Output = Result<R::Response>> + Send + '_ {
        // The common case decided before the future exists, so the future
        // holds only what it needs: the request, its context and the
        // handler's (erased) future.
        let local = self.local_route::<R>();
        async move {
            let Some(route) = local else {
                return Box::pin(self.send_with(request, Metadata::new())).await;
            };
            let ctx = Context::new(self.clone(), Metadata::new(), R::NAME);
            if route.pipeline.is_empty() {
                // `run_here`'s first branch, written out, with the handler's
                // future made where it is polled (`call_in`).
                let mut slot = std::pin::pin!(None);
                route.handler.call_in(&request, &ctx, slot.as_mut());
                match slot.as_pin_mut() {
                    Some(call) => guarded(R::NAME, route.id.type_name, call).await,
                    // `call_in` always fills the slot; this answers a bug
                    // with an error instead of a panic.
                    None => Err(internal(R::NAME, "the handler made no future")),
                }
            } else {
                route.run_here(&request, &ctx).await
            }
        }
    }

    /// The route of `R` when a plain send runs it on the caller's task: local
    /// and not detached.
    #[inline]
    fn local_route<R: Request>(&self) -> Option<&RequestRoute<R>> {
        let route = self.inner.requests.get(&std::any::TypeId::of::<R>())?;
        let route = route.downcast_ref::<RequestRoute<R>>()?;
        let local = !route.remote || self.inner.transport.is_none();
        (local && !route.detached).then_some(route)
    }

    /// Like [`Mediator::send`], with per-call metadata: message id, timeout, headers.
    pub async fn send_with<R: Request>(&self, request: R, meta: Metadata) -> Result<R::Response> {
        let Some(route) = self.inner.requests.get(&std::any::TypeId::of::<R>()) else {
            // Boxed so the large remote future does not bloat the local fast path.
            return Box::pin(self.send_remote(&request, meta)).await;
        };
        let route = downcast_route::<RequestRoute<R>>(&**route, R::NAME)?;
        if route.remote && self.inner.transport.is_some() {
            return Box::pin(self.send_remote(&request, meta)).await;
        }
        let ctx = Context::new(self.clone(), meta, R::NAME);
        let plain = ctx.deadline().is_none() && ctx.headers().is_empty();
        if plain && !route.detached {
            route.run_here(&request, &ctx).await
        } else {
            // Boxed so the deadline timer, the fence check and the task of a
            // detached route (a behavior that runs to completion, on the
            // builder or in a stacked handler) do not bloat the path above.
            Box::pin(route.dispatch_owned(request, ctx)).await
        }
    }

    async fn send_remote<R: Request>(&self, request: &R, meta: Metadata) -> Result<R::Response> {
        let Some(transport) = &self.inner.transport else {
            return Err(Error::no_handler(R::NAME, "request"));
        };
        let format = self.inner.format;
        let payload = format
            .encode_bytes(request)
            .map_err(|e| e.with_message_name(R::NAME))?;
        let timeout = meta.remaining().unwrap_or(self.inner.request_timeout);
        if timeout.is_zero() {
            // The deadline passed already: the receiver would not run it.
            return Err(Error::timeout(R::NAME, Duration::ZERO));
        }
        let mut wire = WireMessage::new(R::NAME, payload, format, &meta);
        wire.timeout = Some(timeout);
        self.inner.retry_budget.deposit();
        let reply = match transport.request(wire, timeout).await {
            Err(e) if is_shed(&e) => {
                // Rare: encode it again (same ids, from `meta`) rather than
                // keep a copy of every request for this case.
                let payload = format
                    .encode_bytes(request)
                    .map_err(|e| e.with_message_name(R::NAME))?;
                let mut wire = WireMessage::new(R::NAME, payload, format, &meta);
                wire.timeout = Some(timeout);
                Box::pin(self.try_other_copies(&**transport, wire, meta.deadline(), e)).await?
            }
            reply => reply?,
        };
        reply
            .format
            .decode::<R::Response>(&reply.payload)
            .map_err(|e| e.with_message_name(R::NAME))
    }

    /// A request the peer that took it turned away (`catga.overloaded`, its
    /// transport at a limit): sent again at
    /// once, at most twice, while the retry budget and the deadline allow (a
    /// transport such as NATS hands it to another copy, which may have room).
    #[cold]
    async fn try_other_copies(
        &self,
        transport: &dyn Transport,
        mut wire: WireMessage,
        deadline: Option<Instant>,
        mut error: Error,
    ) -> Result<WireReply> {
        let budget = &self.inner.retry_budget;
        let Some(deadline) = deadline.or_else(|| Instant::now().checked_add(wire.timeout?)) else {
            return Err(error);
        };
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !budget.withdraw() {
                break;
            }
            wire.timeout = Some(left);
            match transport.request(wire.clone(), left).await {
                Err(e) if is_shed(&e) => error = e,
                other => return other,
            }
        }
        Err(error)
    }

    /// Publishes `event` to every local handler and, through the transport, to
    /// every other service that handles it.
    ///
    /// Local handlers run concurrently and every one runs to completion, whatever
    /// the others do. Returns `Ok(())` when all of them succeeded and the transport
    /// (if any) accepted the event; an event with no handler anywhere is not an
    /// error. Otherwise it returns the first failure in registration order (local
    /// handlers first, the transport last); when more than one thing failed,
    /// [`Error::related`] lists every failure, the returned one included.
    pub fn publish<E: Event>(&self, event: E) -> impl Future<Output = Result<()>> + Send + '_ {
        // As in `send`: the common case (local handlers on the caller's task,
        // no transport) decided first, so its future stays small.
        let local = match (&self.inner.transport, event_route::<E>(&self.inner)) {
            (None, None) => Some(None),
            (None, Some(Ok(route))) if !route.detached => Some(Some(route)),
            _ => None,
        };
        async move {
            match local {
                Some(None) => Ok(()),
                Some(Some(route)) => {
                    let ctx = Context::new(self.clone(), Metadata::new(), E::NAME);
                    Error::combine(E::NAME, route.run_all(&event, &ctx).await)
                }
                None => Box::pin(self.publish_with(event, Metadata::new())).await,
            }
        }
    }

    /// Like [`Mediator::publish`], with per-call metadata.
    pub async fn publish_with<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let route = event_route::<E>(&self.inner).transpose()?;
        // Every handler and the transport get this one context (or a copy,
        // which fixes the message id first): they all see the same id.
        let ctx = Context::new(self.clone(), meta, E::NAME);
        if let Some(route) = route.filter(|r| r.detached) {
            return Box::pin(self.publish_detached(route, event, ctx)).await;
        }
        let failures = match (&self.inner.transport, route) {
            (None, None) => Vec::new(),
            (None, Some(route)) => route.dispatch(&event, &ctx).await,
            // No local handler: straight to the transport (its future is boxed
            // already), no join.
            (Some(transport), None) => match self.wire_event(&event, &ctx, false) {
                Ok(wire) => transport.publish(wire).await.err().into_iter().collect(),
                Err(e) => vec![e],
            },
            // Boxed so the transport's future does not bloat the local fast path.
            (Some(transport), route) => {
                Box::pin(self.publish_everywhere(&**transport, route, &event, &ctx)).await
            }
        };
        Error::combine(E::NAME, failures)
    }

    /// The event as the transport sends it; `handled_here` marks it as already
    /// handled by this service (its other copies skip it).
    fn wire_event<E: Event>(
        &self,
        event: &E,
        ctx: &Context,
        handled_here: bool,
    ) -> Result<WireMessage> {
        let payload = self
            .inner
            .format
            .encode_bytes(event)
            .map_err(|e| e.with_message_name(E::NAME))?;
        let mut wire = WireMessage::new(E::NAME, payload, self.inner.format, ctx.metadata());
        wire.reliable = E::RELIABLE;
        if handled_here {
            wire.handled_by = Some(self.inner.service.clone());
        }
        Ok(wire)
    }

    /// Runs local handlers that must run to completion on a task of their own,
    /// and hands the event to the transport (if any), concurrently.
    async fn publish_detached<E: Event>(
        &self,
        route: &EventRoute<E>,
        event: E,
        ctx: Context,
    ) -> Result<()> {
        let event = Arc::new(event);
        let remote = self
            .inner
            .transport
            .as_ref()
            .map(|transport| (transport, self.wire_event(&*event, &ctx, true)));
        let local = route.dispatch_shared(event, ctx);
        let remote = async {
            match remote {
                Some((transport, wire)) => transport.publish(wire?).await,
                None => Ok(()),
            }
        };
        let (mut failures, remote) = futures_util::future::join(local, remote).await;
        failures.extend(remote.err());
        Error::combine(E::NAME, failures)
    }

    /// Runs local handlers and hands the event to the transport, concurrently.
    async fn publish_everywhere<E: Event>(
        &self,
        transport: &dyn Transport,
        route: Option<&EventRoute<E>>,
        event: &E,
        ctx: &Context,
    ) -> Vec<Error> {
        let local = async {
            match route {
                Some(route) => route.dispatch(event, ctx).await,
                None => Vec::new(),
            }
        };
        let remote = async {
            let wire = self.wire_event(event, ctx, route.is_some())?;
            transport.publish(wire).await
        };
        let (mut failures, remote) = futures_util::future::join(local, remote).await;
        failures.extend(remote.err());
        failures
    }

    /// Publishes an event that is already encoded (an outbox entry): through the
    /// transport when there is one (every service, this one included, gets it
    /// once), otherwise to the local handlers.
    pub async fn publish_record(&self, record: &OutboxRecord) -> Result<()> {
        let format = Format::from_content_type(&record.content_type).ok_or_else(|| {
            Error::codec(format!(
                "outbox entry of `{}` has unknown content type `{}`",
                record.name, record.content_type
            ))
            .with_retryable(false)
        })?;
        let mut headers = crate::metadata::Headers::new();
        let (mut reliable, mut durable) = (false, false);
        for (n, v) in &record.headers {
            if n.eq_ignore_ascii_case(crate::metadata::RELIABLE_HEADER) {
                reliable = true;
            } else if n.eq_ignore_ascii_case(crate::metadata::DURABLE_HEADER) {
                durable = true;
            } else {
                headers.insert(n.clone(), v.clone());
            }
        }
        let wire = WireMessage {
            name: record.name.clone().into(),
            payload: record.payload.clone(),
            format,
            message_id: record.message_id,
            correlation_id: record.correlation_id,
            causation_id: record.causation_id,
            timeout: None,
            headers,
            handled_by: None,
            reliable,
        };
        if durable {
            // A command a handler sent durably, stored with its result.
            return self.store_command(wire).await;
        }
        match &self.inner.transport {
            Some(transport) => transport.publish(wire).await,
            None => match self.inner.inbound_events.get(&*wire.name) {
                Some(handle) => handle(self.clone(), wire).await,
                None => Ok(()),
            },
        }
    }
}

impl Mediator {
    /// Sends `command` durably and returns once it is stored: its handling
    /// service takes it when it can, at least once, with redelivery after a
    /// failure and dead letters after too many (JetStream on NATS). The
    /// handler's response is not returned; declare the handler idempotent so
    /// that a redelivery takes effect once.
    ///
    /// `R` must be declared durable (`Request::DURABLE`,
    /// `#[catga(durable)]`): its handlers serve the stored queue. Without a
    /// transport, the command runs here on a task of its own, retried with
    /// backoff (five attempts): in memory, it is lost with the process.
    pub async fn send_durable<R: Request>(&self, command: R) -> Result<()> {
        self.send_durable_with(command, Metadata::new()).await
    }

    /// Like [`Mediator::send_durable`], with per-call metadata (ids,
    /// headers; a deadline is not kept: a stored command has none).
    pub async fn send_durable_with<R: Request>(&self, command: R, meta: Metadata) -> Result<()> {
        durable::<R>()?;
        let payload = self
            .inner
            .format
            .encode_bytes(&command)
            .map_err(|e| e.with_message_name(R::NAME))?;
        let mut wire = WireMessage::new(R::NAME, payload, self.inner.format, &meta);
        wire.timeout = None;
        self.store_command(wire).await
    }

    /// Hands a command to the transport's store, or runs it here in the
    /// background when there is no transport.
    async fn store_command(&self, wire: WireMessage) -> Result<()> {
        match &self.inner.transport {
            Some(transport) => transport.send_durable(wire).await,
            None => {
                let handle = self
                    .inner
                    .inbound_requests
                    .get(&*wire.name)
                    .copied()
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NoHandler,
                            format!(
                                "`{}` was sent durably, but this peer has no transport and no \
                                 handler for it",
                                wire.name
                            ),
                        )
                    })?;
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::new(ErrorKind::Config, "send_durable needs a Tokio runtime")
                })?;
                runtime.spawn(run_durably(handle, self.clone(), wire));
                Ok(())
            }
        }
    }
}

/// Runs a durable command on this peer: up to five attempts with jittered
/// backoff while it fails with a retryable error; a command that still
/// fails is logged (there is no store to dead-letter it in).
async fn run_durably(
    handle: crate::dispatch::handle::InboundRequestFn,
    mediator: Mediator,
    wire: WireMessage,
) {
    let backoff = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    crate::backoff::retry_in_process(&wire.name, 5, backoff, Error::is_retryable, || {
        let attempt = handle(mediator.clone(), wire.clone());
        async move { attempt.await.map(drop) }
    })
    .await;
}

/// `Ok` when `R` is declared durable.
fn durable<R: Request>() -> Result<()> {
    if R::DURABLE {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "`{}` was sent durably but is not declared durable: add `#[catga(durable)]` (or \
             `const DURABLE: bool = true`), so that its handlers serve the stored queue",
            R::NAME
        ),
    )
    .with_message_name(R::NAME))
}

/// Whether `e` is a peer's transport turning a request away at its limit
/// (not a handler's own `overloaded`, such as a full saga backlog, which asks
/// the caller to back off rather than knock at another copy).
fn is_shed(e: &Error) -> bool {
    e.kind() == ErrorKind::Overloaded && e.code() == Some("catga.overloaded")
}

impl Context {
    /// Sends a request as a consequence of the current message.
    pub async fn send<R: Request>(&self, request: R) -> Result<R::Response> {
        self.mediator()
            .send_with(request, self.metadata().child())
            .await
    }

    /// Like [`Context::send`], with per-call metadata (values set there win).
    pub async fn send_with<R: Request>(&self, request: R, meta: Metadata) -> Result<R::Response> {
        self.mediator()
            .send_with(request, self.metadata().child().overridden_by(meta))
            .await
    }

    /// Sends a command durably as a consequence of the current message (see
    /// [`Mediator::send_durable`]). Under idempotency with an outbox it is
    /// held back like an event and stored with the handler's result: sent if
    /// and only if the result is stored.
    pub async fn send_durable<R: Request>(&self, command: R) -> Result<()> {
        durable::<R>()?;
        let meta = self.metadata().child().without_deadline();
        match self.held_events() {
            Some(buffer) => self.hold_message(
                &buffer,
                &command,
                &meta,
                Some(crate::metadata::DURABLE_HEADER),
            ),
            None => self.mediator().send_durable_with(command, meta).await,
        }
    }

    /// Publishes an event as a consequence of the current message.
    ///
    /// The event does not inherit what is left of this message's deadline: an
    /// event is a fact, and its handlers (and a stream that stores it for
    /// redelivery) must not time out because its publisher was in a hurry.
    ///
    /// Under idempotency with an outbox, the event is held back and stored
    /// with the handler's result; once the handler's attempt has ended (a
    /// task it spawned publishing late), it fails with
    /// [`ErrorKind::Config`] instead of being held where nothing reads it.
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        let meta = self.metadata().child().without_deadline();
        match self.held_events() {
            Some(buffer) => self.hold(&buffer, &event, &meta),
            None => self.mediator().publish_with(event, meta).await,
        }
    }

    /// Like [`Context::publish`], with per-call metadata (values set there win,
    /// a deadline included).
    pub async fn publish_with<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let meta = self
            .metadata()
            .child()
            .without_deadline()
            .overridden_by(meta);
        match self.held_events() {
            Some(buffer) => self.hold(&buffer, &event, &meta),
            None => self.mediator().publish_with(event, meta).await,
        }
    }
}
