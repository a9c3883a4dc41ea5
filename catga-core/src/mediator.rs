//! The mediator: sends requests to their one handler and publishes events to all.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backoff::RetryBudget;
use crate::codec::Format;
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::leader::{self, LeaderTask};
use crate::message::{Event, Request};
use crate::metadata::Metadata;
use crate::relay::{self, RelayOptions};
use crate::route::{EventRoute, RequestRoute, TypeMap, downcast_route, guarded};
use crate::saga::{Backlog, Saga, SagaData, SagaState, SagaStore};
use crate::store::{LockStore, OutboxRecord, OutboxStore};
use crate::transport::{
    DEFAULT_REQUEST_TIMEOUT, Inbound, PeerSpec, Transport, WireMessage, WireReply,
};

pub(crate) type InboundRequestFn =
    fn(Mediator, WireMessage) -> BoxFuture<'static, Result<WireReply>>;
pub(crate) type InboundEventFn = fn(Mediator, WireMessage) -> BoxFuture<'static, Result<()>>;

/// Everything `build()` fixed; immutable afterwards.
pub(crate) struct Inner {
    pub(crate) requests: TypeMap<Box<dyn Any + Send + Sync>>,
    pub(crate) events: TypeMap<Box<dyn Any + Send + Sync>>,
    pub(crate) inbound_requests: HashMap<&'static str, InboundRequestFn>,
    pub(crate) inbound_events: HashMap<&'static str, InboundEventFn>,
    pub(crate) transport: Option<Arc<dyn Transport>>,
    pub(crate) format: Format,
    pub(crate) service: String,
    pub(crate) peer_id: Uuid,
    pub(crate) request_timeout: Duration,
    /// The longest budget an incoming message gets, whatever its sender asked.
    pub(crate) max_inbound_timeout: Duration,
    /// What every retry of this peer draws from.
    pub(crate) retry_budget: RetryBudget,
    /// How long `shutdown` waits at most.
    pub(crate) shutdown_grace: Duration,
    pub(crate) started: AtomicBool,
    pub(crate) leader_tasks: Vec<LeaderTask>,
    pub(crate) lock_store: Arc<dyn LockStore>,
    pub(crate) running: Running,
    pub(crate) resources: TypeMap<Arc<dyn Any + Send + Sync>>,
    pub(crate) outbox: Option<(Arc<dyn OutboxStore>, RelayOptions)>,
    /// The sagas registered here, by name, with their backlog.
    pub(crate) sagas: HashMap<String, Backlog>,
    pub(crate) saga_store: Arc<dyn SagaStore>,
    pub(crate) saga_wake: Arc<tokio::sync::Notify>,
    pub(crate) leading: std::sync::Mutex<std::collections::BTreeSet<Arc<str>>>,
}

/// Background work started by [`Mediator::start`].
#[derive(Default)]
pub(crate) struct Running {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Dispatches messages: a cheap `Clone` handle, built by [`Catga::builder`](crate::Catga::builder).
///
/// - [`send`](Mediator::send) runs the one handler of a request: here when this
///   peer has it, otherwise on a peer reached through the transport.
/// - [`publish`](Mediator::publish) runs every local handler of an event
///   concurrently and hands the event to the transport for other services.
#[derive(Clone)]
pub struct Mediator {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Mediator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mediator")
            .field("service", &self.inner.service)
            .field("peer_id", &self.inner.peer_id)
            .field("requests", &self.inner.inbound_requests.len())
            .field("events", &self.inner.inbound_events.len())
            .field("transport", &self.inner.transport.is_some())
            .finish()
    }
}

impl Mediator {
    /// Sends `request` to its handler and returns the response.
    ///
    /// Errors: [`ErrorKind::NoHandler`] when no handler exists here and no peer
    /// answers; otherwise whatever the handler, a behavior or the transport returned.
    pub fn send<R: Request>(
        &self,
        request: R,
    ) -> impl Future<Output = Result<R::Response>> + Send + '_ {
        self.send_with(request, Metadata::new())
    }

    /// Like [`Mediator::send`], with per-call metadata: message id, timeout, headers.
    pub async fn send_with<R: Request>(&self, request: R, meta: Metadata) -> Result<R::Response> {
        let Some(route) = self.inner.requests.get(&TypeId::of::<R>()) else {
            // Boxed so the large remote future does not bloat the local fast path.
            return Box::pin(self.send_remote(&request, meta)).await;
        };
        let route = downcast_route::<RequestRoute<R>>(&**route, R::NAME)?;
        if route.remote && self.inner.transport.is_some() {
            return Box::pin(self.send_remote(&request, meta)).await;
        }
        let ctx = Context::new(self.clone(), meta, R::NAME);
        let plain = ctx.deadline().is_none() && ctx.headers().is_empty();
        match (route.pipeline.is_empty(), plain) {
            // Fast path: one virtual call, one boxed future, nothing else.
            (true, true) => {
                guarded(
                    R::NAME,
                    route.id.type_name,
                    route.handler.call(&request, &ctx),
                )
                .await
            }
            (false, true) if !route.detached => route.through_pipeline(&request, &ctx).await,
            // Boxed so the deadline timer, the fence check and the task of a
            // detached pipeline do not bloat the paths above.
            _ => Box::pin(route.dispatch_owned(request, ctx)).await,
        }
    }

    /// The local route of request `R`.
    pub(crate) fn request_route<R: Request>(&self) -> Result<&RequestRoute<R>> {
        let route = self
            .inner
            .requests
            .get(&TypeId::of::<R>())
            .ok_or_else(|| Error::no_handler(R::NAME, "request"))?;
        downcast_route::<RequestRoute<R>>(&**route, R::NAME)
    }

    /// The local handlers of event `E`, if any.
    pub(crate) fn event_route<E: Event>(&self) -> Option<Result<&EventRoute<E>>> {
        self.inner
            .events
            .get(&TypeId::of::<E>())
            .map(|route| downcast_route::<EventRoute<E>>(&**route, E::NAME))
    }

    /// The lock store leader tasks compete in (and fences are checked against).
    pub(crate) fn lock_store(&self) -> &dyn LockStore {
        &*self.inner.lock_store
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
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        self.publish_with(event, Metadata::new()).await
    }

    /// Like [`Mediator::publish`], with per-call metadata.
    pub async fn publish_with<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let route = self.event_route::<E>().transpose()?;
        let ctx = Context::new(self.clone(), meta, E::NAME);
        if route.is_some_and(|r| r.slots.len() > 1) || self.inner.transport.is_some() {
            // Fixed before any handler gets its own copy of the context, so
            // every handler (and the transport) sees the same message id.
            ctx.message_id();
        }
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

    /// Starts receiving messages from the transport (if any) and competing for
    /// leader tasks (if any). Call once after `build()`; later calls do nothing.
    pub async fn start(&self) -> Result<()> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some((store, options)) = &self.inner.outbox {
            self.inner.running.tasks.spawn(relay::run(
                store.clone(),
                self.clone(),
                options.clone(),
                self.inner.running.shutdown.clone(),
            ));
        }
        for task in &self.inner.leader_tasks {
            self.inner.running.tasks.spawn(leader::run(
                task.clone(),
                self.inner.lock_store.clone(),
                self.clone(),
                self.inner.running.shutdown.clone(),
            ));
        }
        let Some(transport) = &self.inner.transport else {
            return Ok(());
        };
        let mut requests: Vec<_> = self.inner.inbound_requests.keys().copied().collect();
        let mut events: Vec<_> = self.inner.inbound_events.keys().copied().collect();
        requests.sort_unstable();
        events.sort_unstable();
        let spec = PeerSpec {
            service: self.inner.service.clone(),
            peer_id: self.inner.peer_id,
            requests,
            events,
        };
        let inbound = Arc::new(MediatorInbound {
            mediator: Arc::downgrade(&self.inner),
        });
        transport.start(spec, inbound).await
    }

    /// Stops gracefully: cancels leader tasks and releases their locks (another
    /// peer takes over at once), makes a last outbox relay pass, stops taking
    /// messages from the transport, lets those in flight finish, and
    /// disconnects. Local dispatch keeps working.
    ///
    /// Bounded by the builder's [`shutdown_grace`](crate::CatgaBuilder::shutdown_grace)
    /// (30 s by default) whatever the state of the servers: what has not
    /// finished by then is left, and the error names it (a process should exit
    /// non-zero).
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(self.inner.shutdown_grace).await
    }

    /// [`Mediator::shutdown`] within `grace` instead of the builder's.
    pub async fn shutdown_within(&self, grace: Duration) -> Result<()> {
        let deadline = Instant::now() + grace;
        self.inner.running.shutdown.cancel();
        self.inner.running.tasks.close();
        let mut left = Vec::new();
        let tasks = &self.inner.running.tasks;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            left.push(format!(
                "{} background tasks (leader tasks, sagas, the outbox relay's last pass)",
                tasks.len()
            ));
        }
        let drained = match &self.inner.transport {
            Some(transport) => {
                match tokio::time::timeout_at(deadline, transport.shutdown()).await {
                    Ok(drained) => drained,
                    Err(_) => {
                        left.push(
                            "the transport's drain (messages in flight, unflushed output)"
                                .to_owned(),
                        );
                        Ok(())
                    }
                }
            }
            None => Ok(()),
        };
        if !left.is_empty() {
            return Err(Error::new(
                ErrorKind::Cancelled,
                format!(
                    "shutdown stopped waiting after {grace:?}; not finished: {} (are the \
                     servers reachable?)",
                    left.join("; ")
                ),
            ));
        }
        drained
    }

    /// The resource of type `T` given to the builder with
    /// [`CatgaBuilder::resource`](crate::CatgaBuilder::resource).
    pub fn resource<T: Send + Sync + 'static>(&self) -> Result<&T> {
        self.inner
            .resources
            .get(&TypeId::of::<T>())
            .and_then(|r| r.downcast_ref::<T>())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "no resource of type `{}`: add it with `.resource(..)` on the builder",
                        std::any::type_name::<T>()
                    ),
                )
            })
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
        for (n, v) in &record.headers {
            headers.insert(n.clone(), v.clone());
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
        };
        match &self.inner.transport {
            Some(transport) => transport.publish(wire).await,
            None => match self.inner.inbound_events.get(&*wire.name) {
                Some(handle) => handle(self.clone(), wire).await,
                None => Ok(()),
            },
        }
    }

    /// Starts an instance of `saga` with `data` and returns its id. The saga must
    /// be registered on this peer (`.saga(..)` on the builder); its coordinator,
    /// on whichever peer leads, runs it.
    pub async fn start_saga<D: SagaData>(&self, saga: &Saga<D>, data: D) -> Result<Uuid> {
        self.start_saga_with_id(saga, crate::new_id(), data).await
    }

    /// Like [`Mediator::start_saga`] with a chosen id. Idempotent: when a saga
    /// with this id exists, nothing changes and the id is returned, so a caller
    /// that retries (or derives the id from its own entity) starts it once.
    pub async fn start_saga_with_id<D: SagaData>(
        &self,
        saga: &Saga<D>,
        id: Uuid,
        data: D,
    ) -> Result<Uuid> {
        let backlog = self.registered(saga.name())?;
        let created = crate::saga::start(
            &*self.inner.saga_store,
            &self.inner.saga_wake,
            saga,
            id,
            &data,
        )
        .await?;
        if created {
            backlog.started();
        }
        Ok(id)
    }

    /// Whether saga `saga` may start one more now: `Ok`, or `overloaded` (code
    /// `catga.saga_backlog`, retryable) when its backlog is at its
    /// [`Saga::max_backlog`]. Call it before the side effects that lead to
    /// [`Mediator::start_saga`] (which itself never refuses), and answer the
    /// caller with the error: it may try again shortly.
    pub async fn admit_saga<D: SagaData>(&self, saga: &Saga<D>) -> Result<()> {
        self.registered(saga.name())?
            .admit(&*self.inner.saga_store, saga.name())
            .await
    }

    fn registered(&self, name: &str) -> Result<&Backlog> {
        self.inner.sagas.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "saga `{name}` is not registered on this peer: add `.saga(..)` to the builder"
                ),
            )
        })
    }

    /// The state of saga `id`: status, current step, data and history.
    pub async fn saga(&self, id: Uuid) -> Result<Option<SagaState>> {
        self.inner.saga_store.load(id).await
    }

    /// Waits until what this peer published through its transport has
    /// reached the server.
    pub(crate) async fn flush_transport(&self) -> Result<()> {
        match &self.inner.transport {
            Some(transport) => transport.flush().await,
            None => Ok(()),
        }
    }

    /// Whether this peer can serve: `Ok` when it has no transport or its
    /// transport is connected and every subscription is serving; otherwise
    /// the reason (for a readiness probe).
    pub fn ready(&self) -> Result<()> {
        match &self.inner.transport {
            Some(transport) => transport.ready(),
            None => Ok(()),
        }
    }

    /// The retry budget every retry of this peer draws from (see
    /// [`RetryBudget`]); its [`denied`](RetryBudget::denied) count is worth
    /// exporting.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.inner.retry_budget
    }

    /// Names of the leader-only tasks this peer runs right now.
    pub fn leading(&self) -> Vec<String> {
        self.inner
            .leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    pub(crate) fn set_leading(&self, name: &Arc<str>, leading: bool) {
        let mut set = self.inner.leading.lock().unwrap_or_else(|p| p.into_inner());
        if leading {
            set.insert(name.clone());
        } else {
            set.remove(name);
        }
    }

    /// The outbox this peer relays, if any (for a backlog gauge).
    pub fn outbox_store(&self) -> Option<Arc<dyn OutboxStore>> {
        self.inner.outbox.as_ref().map(|(s, _)| s.clone())
    }

    /// Whether a relay moves this peer's outbox (set with the builder's `.outbox(..)`).
    pub fn has_outbox(&self) -> bool {
        self.inner.outbox.is_some()
    }

    /// Name of the service this peer belongs to.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Unique id of this peer.
    pub fn peer_id(&self) -> Uuid {
        self.inner.peer_id
    }

    /// Whether this peer has a local handler for `R`.
    pub fn handles<R: Request>(&self) -> bool {
        self.inner.requests.contains_key(&TypeId::of::<R>())
    }

    /// The payload format this peer writes.
    pub fn format(&self) -> Format {
        self.inner.format
    }
}

/// The mediator as seen by a transport; weak, so a transport never keeps a
/// dropped mediator alive.
struct MediatorInbound {
    mediator: Weak<Inner>,
}

impl MediatorInbound {
    fn mediator(&self) -> Result<Mediator> {
        self.mediator
            .upgrade()
            .map(|inner| Mediator { inner })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Cancelled,
                    "this peer's mediator was dropped; the message was not handled",
                )
            })
    }
}

/// Whether `e` is a peer's transport turning a request away at its limit
/// (not a handler's own `overloaded`, such as a full saga backlog, which asks
/// the caller to back off rather than knock at another copy).
fn is_shed(e: &Error) -> bool {
    e.kind() == ErrorKind::Overloaded && e.code() == Some("catga.overloaded")
}

/// Checks the deadline of an incoming message: past it, the message is not
/// handled (its caller has stopped waiting); a budget over the peer's cap is
/// cut to the cap (a client cannot pin this peer's capacity for longer).
fn admit_deadline(message: &mut WireMessage, cap: Duration) -> Result<()> {
    match &mut message.timeout {
        Some(left) if left.is_zero() => Err(Error::expired(message.name.clone())),
        Some(left) => {
            *left = (*left).min(cap);
            Ok(())
        }
        None => Ok(()),
    }
}

impl Inbound for MediatorInbound {
    fn request(&self, mut message: WireMessage) -> BoxFuture<'static, Result<WireReply>> {
        let mediator = match self.mediator() {
            Ok(m) => m,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        message.timeout.get_or_insert(DEFAULT_REQUEST_TIMEOUT);
        if let Err(e) = admit_deadline(&mut message, mediator.inner.max_inbound_timeout) {
            return Box::pin(std::future::ready(Err(e)));
        }
        match mediator.inner.inbound_requests.get(&*message.name) {
            Some(handle) => handle(mediator.clone(), message),
            None => Box::pin(std::future::ready(Err(unknown_name(
                &message.name,
                "request",
            )))),
        }
    }

    fn event(&self, mut message: WireMessage) -> BoxFuture<'static, Result<()>> {
        let mediator = match self.mediator() {
            Ok(m) => m,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if let Err(e) = admit_deadline(&mut message, mediator.inner.max_inbound_timeout) {
            return Box::pin(std::future::ready(Err(e)));
        }
        if message.handled_by.as_deref() == Some(mediator.service()) {
            return Box::pin(std::future::ready(Ok(())));
        }
        match mediator.inner.inbound_events.get(&*message.name) {
            Some(handle) => handle(mediator.clone(), message),
            None => Box::pin(std::future::ready(Err(unknown_name(
                &message.name,
                "event",
            )))),
        }
    }
}

/// Runs user code that is not a handler (a `Deserialize` or `Serialize`
/// impl) and turns a panic in it into a codec error: the peer answers and
/// keeps serving.
fn unwinding<T>(name: &'static str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = crate::error::panic_message(&*panic);
        tracing::error!(message = name, what, panic = %why, "serde code panicked");
        Err(Error::codec(format!("{what} panicked: {why}"))
            .with_message_name(name)
            .with_retryable(false))
    })
}

fn undecodable(name: &'static str, e: &Error) -> Error {
    Error::codec(format!(
        "the payload of `{name}` could not be decoded: {}; the sender must encode the \
         message in the format its content type names",
        e.message()
    ))
    .with_message_name(name)
    .with_retryable(false)
}

fn unknown_name(name: &str, kind: &str) -> Error {
    Error::new(
        ErrorKind::NoHandler,
        format!("this peer has no handler for {kind} `{name}`; the message was not decoded"),
    )
    .with_message_name(name.to_owned())
}

/// Decodes an incoming request of type `R` and runs it through its local route.
pub(crate) fn inbound_request<R: Request>(
    mediator: Mediator,
    message: WireMessage,
) -> BoxFuture<'static, Result<WireReply>> {
    Box::pin(async move {
        let request: R = unwinding(R::NAME, "decoding", || {
            message.format.decode(&message.payload)
        })
        .map_err(|e| undecodable(R::NAME, &e))?;
        let route = mediator.request_route::<R>()?;
        let ctx = Context::new(mediator.clone(), message.metadata(), R::NAME);
        let response = route.dispatch_inbound(&request, &ctx).await?;
        let payload = unwinding(R::NAME, "encoding the response", || {
            message.format.encode_bytes(&response)
        })
        .map_err(|e| e.with_message_name(R::NAME))?;
        Ok(WireReply {
            payload,
            format: message.format,
        })
    })
}

/// Decodes an incoming event of type `E` and runs its local handlers.
pub(crate) fn inbound_event<E: Event>(
    mediator: Mediator,
    message: WireMessage,
) -> BoxFuture<'static, Result<()>> {
    Box::pin(async move {
        let event: E = unwinding(E::NAME, "decoding", || {
            message.format.decode(&message.payload)
        })
        .map_err(|e| undecodable(E::NAME, &e))?;
        let Some(route) = mediator.event_route::<E>().transpose()? else {
            return Ok(());
        };
        let ctx = Context::new(mediator.clone(), message.metadata(), E::NAME);
        Error::combine(E::NAME, route.dispatch_inbound(&event, &ctx).await)
    })
}
