//! The fluent builder that registers handlers and behaviors and builds a [`Mediator`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::RetryBudget;
use crate::codec::Format;
use crate::dispatch::behavior::validation::{Validate, Validation};
use crate::dispatch::behavior::{Behavior, HandlerId, MessageInfo, SharedBehavior};
use crate::dispatch::context::Context;
use crate::dispatch::handle::{InboundEventFn, InboundRequestFn, Inner, Mediator, TypeMap};
use crate::dispatch::handler::{DynEventHandler, EventHandler, FnHandler, RequestHandler};
use crate::dispatch::inbound::{inbound_event, inbound_request};
use crate::dispatch::route::{
    EventRoute, EventSlot, RequestRoute, ScopedBehavior, detaches, pipeline_for,
};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Message, MessageKind, Request};
use crate::metadata::new_id;
use crate::runtime::leader::{LeaderContext, LeaderTask};
use crate::runtime::relay::RelayOptions;
use crate::runtime::saga::{MemorySagaStore, Saga, SagaData, SagaRunner, SagaStore};
use crate::runtime::{Peer, Plan};
use crate::store::{LockStore, MemoryLockStore, OutboxStore};
use crate::transport::Transport;

/// Entry point: `Catga::builder()`.
#[derive(Debug)]
pub struct Catga(());

impl Catga {
    /// A builder with no handlers, no behaviors, no transport.
    pub fn builder() -> CatgaBuilder {
        CatgaBuilder::default()
    }
}

type FinishFn = fn(Box<dyn Any + Send>, &[ScopedBehavior]) -> Box<dyn Any + Send + Sync>;

/// Builds the typed route once the behaviors and routing are known.
type MakeRoute = Box<dyn FnOnce(&[ScopedBehavior], bool) -> Box<dyn Any + Send + Sync> + Send>;

struct PendingRequest {
    type_id: TypeId,
    name: &'static str,
    type_name: &'static str,
    handler_name: &'static str,
    make: MakeRoute,
    inbound: InboundRequestFn,
}

struct PendingEvents {
    name: &'static str,
    type_name: &'static str,
    /// `Vec<(Box<dyn DynEventHandler<E>>, &'static str)>`, erased.
    handlers: Box<dyn Any + Send>,
    finish: FinishFn,
    /// The registered names of the handlers, to check them at build.
    names: fn(&(dyn Any + Send)) -> Vec<&'static str>,
    inbound: InboundEventFn,
}

/// Each handler with its type name and, when given, its registered name.
type EventHandlers<E> = Vec<(
    Box<dyn DynEventHandler<E>>,
    &'static str,
    Option<&'static str>,
)>;

/// Registers handlers, behaviors and a transport; [`build`](CatgaBuilder::build)
/// checks the whole set and returns a [`Mediator`].
///
/// ```
/// # use catga_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct Ping;
/// # impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
/// # impl Request for Ping { type Response = (); }
/// let mediator = Catga::builder()
///     .request_fn(|_: Ping, _ctx| async { Ok(()) })
///     .behavior(behavior::tracing::Tracing::default())
///     .build()?;
/// # drop(mediator);
/// # Ok::<(), Error>(())
/// ```
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct CatgaBuilder {
    requests: Vec<PendingRequest>,
    events: Vec<(TypeId, PendingEvents)>,
    behaviors: Vec<ScopedBehavior>,
    transport: Option<Arc<dyn Transport>>,
    remote: Vec<(TypeId, &'static str)>,
    format: Format,
    service: String,
    request_timeout: Duration,
    max_inbound_timeout: Duration,
    retry_budget: RetryBudget,
    shutdown_grace: Duration,
    leader_tasks: Vec<LeaderTask>,
    lock_store: Option<Arc<dyn LockStore>>,
    resources: TypeMap<Arc<dyn Any + Send + Sync>>,
    /// The outbox, and how this peer relays it (`None`: another peer does).
    outbox: Option<(Arc<dyn OutboxStore>, Option<RelayOptions>)>,
    sagas: Vec<Arc<dyn SagaRunner>>,
    saga_store: Option<Arc<dyn SagaStore>>,
    single_copy: bool,
}

impl Default for CatgaBuilder {
    fn default() -> Self {
        CatgaBuilder {
            requests: Vec::new(),
            events: Vec::new(),
            behaviors: Vec::new(),
            transport: None,
            remote: Vec::new(),
            format: Format::default(),
            service: "catga".to_owned(),
            request_timeout: crate::transport::DEFAULT_REQUEST_TIMEOUT,
            max_inbound_timeout: Duration::from_secs(60),
            retry_budget: RetryBudget::default(),
            shutdown_grace: Duration::from_secs(30),
            leader_tasks: Vec::new(),
            lock_store: None,
            resources: TypeMap::default(),
            outbox: None,
            sagas: Vec::new(),
            saga_store: None,
            single_copy: false,
        }
    }
}

impl fmt::Debug for CatgaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatgaBuilder")
            .field("service", &self.service)
            .field("requests", &self.requests.len())
            .field("events", &self.events.len())
            .field("behaviors", &self.behaviors.len())
            .field("transport", &self.transport.is_some())
            .finish()
    }
}

impl CatgaBuilder {
    /// Registers the handler of request `R`. A second handler for the same request
    /// type (or wire name) makes [`build`](CatgaBuilder::build) fail, naming both.
    pub fn request_handler<R: Request, H: RequestHandler<R>>(self, handler: H) -> Self {
        self.request_handler_typed(handler, std::any::type_name::<H>())
    }

    /// Registers the handler of `R` under a type name used in logs.
    pub(crate) fn request_handler_typed<R: Request, H: RequestHandler<R>>(
        mut self,
        handler: H,
        handler_name: &'static str,
    ) -> Self {
        let make: MakeRoute = Box::new(move |behaviors, remote| {
            let pipeline = pipeline_for(behaviors, TypeId::of::<R>());
            Box::new(RequestRoute::<R> {
                handler: Box::new(handler),
                // A request has one handler: the message name identifies it.
                id: HandlerId {
                    id: R::NAME.into(),
                    type_name: handler_name,
                },
                detached: detaches(&pipeline),
                pipeline,
                info: MessageInfo::new::<R, R::Response>(MessageKind::Request),
                remote,
            })
        });
        self.requests.push(PendingRequest {
            type_id: TypeId::of::<R>(),
            name: R::NAME,
            type_name: std::any::type_name::<R>(),
            handler_name,
            make,
            inbound: inbound_request::<R>,
        });
        self
    }

    /// Registers a closure as the handler of request `R`; it receives an owned
    /// clone of the request and of the context.
    pub fn request_fn<R, F, Fut>(self, f: F) -> Self
    where
        R: Request + Clone,
        F: Fn(R, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response>> + Send + 'static,
    {
        self.request_handler::<R, _>(FnHandler::<F, R>::new(f))
    }

    /// Adds a handler of event `E`; an event may have any number of handlers.
    ///
    /// Its stable id (what idempotency keys use) is `<event name>#<n>`, `n`
    /// being its position among `E`'s handlers registered without a name. Give
    /// it a name with [`CatgaBuilder::event_handler_named`] when the order of
    /// registrations may change between versions of the service.
    pub fn event_handler<E: Event, H: EventHandler<E>>(self, handler: H) -> Self {
        self.event_handler_with(handler, std::any::type_name::<H>(), None)
    }

    /// Adds a handler of event `E` under `name`, unique among `E`'s handlers:
    /// its stable id is `<event name>#<name>`, the same on every copy of the
    /// service whatever compiler built it or in which order handlers were added.
    pub fn event_handler_named<E: Event, H: EventHandler<E>>(
        self,
        name: &'static str,
        handler: H,
    ) -> Self {
        self.event_handler_with(handler, std::any::type_name::<H>(), Some(name))
    }

    /// Adds a handler of `E` with its type name (for logs) and optional name.
    pub(crate) fn event_handler_with<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        type_name: &'static str,
        name: Option<&'static str>,
    ) -> Self {
        let entry = (
            Box::new(handler) as Box<dyn DynEventHandler<E>>,
            type_name,
            name,
        );
        let id = TypeId::of::<E>();
        match self.events.iter_mut().find(|(t, _)| *t == id) {
            Some((_, pending)) => {
                if let Some(list) = pending.handlers.downcast_mut::<EventHandlers<E>>() {
                    list.push(entry);
                }
            }
            None => self.events.push((
                id,
                PendingEvents {
                    name: E::NAME,
                    type_name: std::any::type_name::<E>(),
                    handlers: Box::new(vec![entry]),
                    finish: finish_events::<E>,
                    names: handler_names::<E>,
                    inbound: inbound_event::<E>,
                },
            )),
        }
        self
    }

    /// Adds a closure as a handler of event `E` (id `<event name>#<n>`, see
    /// [`CatgaBuilder::event_handler`]).
    pub fn event_fn<E, F, Fut>(self, f: F) -> Self
    where
        E: Event + Clone,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.event_handler::<E, _>(FnHandler::<F, E>::new(f))
    }

    /// Adds a closure as a handler of event `E` under `name` (see
    /// [`CatgaBuilder::event_handler_named`]).
    pub fn event_fn_named<E, F, Fut>(self, name: &'static str, f: F) -> Self
    where
        E: Event + Clone,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.event_handler_named::<E, _>(name, FnHandler::<F, E>::new(f))
    }

    /// Shares `value` with every handler: read it with
    /// [`Context::resource`](crate::Context::resource). One value per type.
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Runs an outbox relay on this peer for `store` (see [`relay`](crate::relay)).
    /// Use the store the idempotency behavior writes to: events its handlers
    /// publish are held back and stored with their result, then relayed.
    pub fn outbox(self, store: impl OutboxStore) -> Self {
        self.outbox_with(store, RelayOptions::default())
    }

    /// Like [`CatgaBuilder::outbox`], with relay options.
    pub fn outbox_with(mut self, store: impl OutboxStore, options: RelayOptions) -> Self {
        self.outbox = Some((Arc::new(store), Some(options)));
        self
    }

    /// Stores events published under idempotency in `store` with the
    /// handler's result, like [`CatgaBuilder::outbox`], but runs no relay
    /// here: other peers of the service (or a process of its own) relay
    /// them. MassTransit users know this as disabling the delivery service.
    pub fn outbox_without_relay(mut self, store: impl OutboxStore) -> Self {
        self.outbox = Some((Arc::new(store), None));
        self
    }

    /// Registers a saga definition: its coordinator runs as a leader-only task
    /// (in the lock store), and [`Mediator::start_saga`] can start it here.
    pub fn saga<D: SagaData>(mut self, saga: Saga<D>) -> Self {
        self.sagas.push(Arc::new(Arc::new(saga)));
        self
    }

    /// Where saga state lives. Default: in memory (one peer).
    pub fn saga_store(mut self, store: impl SagaStore) -> Self {
        self.saga_store = Some(Arc::new(store));
        self
    }

    /// Adds a behavior around every dispatch. Behaviors nest in the order added:
    /// the first added sees the message first and the result last.
    pub fn behavior<B: Behavior>(mut self, behavior: B) -> Self {
        self.behaviors
            .push((None, Arc::new(behavior) as SharedBehavior));
        self
    }

    /// Adds a behavior around dispatches of message type `M` only, at this
    /// position in the order of all behaviors.
    pub fn behavior_for<M: Message, B: Behavior>(mut self, behavior: B) -> Self {
        self.behaviors.push((
            Some(TypeId::of::<M>()),
            Arc::new(behavior) as SharedBehavior,
        ));
        self
    }

    /// Validates every `M` with [`Validate`] before its handler runs; a failure
    /// returns [`ErrorKind::Validation`] and the handler never sees the message.
    pub fn validate<M: Message + Validate>(self) -> Self {
        self.behavior_for::<M, _>(Validation::<M>::new())
    }

    /// Carries requests without a local handler, and every event, to other peers.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Sends `R` through the transport even when this peer has its handler, so the
    /// work spreads over every copy (the local handler still serves its share).
    pub fn route_remote<R: Request>(mut self) -> Self {
        self.remote.push((TypeId::of::<R>(), R::NAME));
        self
    }

    /// Name of this service; copies of one service share its events. Default `"catga"`.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Payload format written to the transport. Default MessagePack.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// How long a remote request waits when the caller set no deadline. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest a handler of a message from another peer may take, whatever
    /// deadline its sender set (default 60 s): a client cannot hold this
    /// peer's capacity for longer. A message that arrives past its deadline
    /// is answered with a timeout (code `catga.expired`) and not handled.
    pub fn max_inbound_timeout(mut self, timeout: Duration) -> Self {
        self.max_inbound_timeout = timeout;
        self
    }

    /// The budget every retry of this peer draws from: the [`Retry`]
    /// behavior, remote sends answered `overloaded`, saga steps. Default: 20 %
    /// of first attempts, at least 10 retries per second.
    ///
    /// [`Retry`]: crate::dispatch::behavior::Retry
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = budget;
        self
    }

    /// The longest [`Mediator::shutdown`] waits for leader tasks, the
    /// outbox relay's last pass and the transport's drain (default 30 s),
    /// whatever the state of NATS and Redis.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Runs `task` on exactly one peer at a time (see [`leader`](crate::leader));
    /// the lease is 10 s, use [`CatgaBuilder::leader`] for another.
    pub fn leader_task<F, Fut>(self, name: impl Into<Arc<str>>, task: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.leader(LeaderTask::new(name, task))
    }

    /// Adds a configured [`LeaderTask`].
    pub fn leader(mut self, task: LeaderTask) -> Self {
        self.leader_tasks.push(task);
        self
    }

    /// The lock store leader tasks compete in. Default: an in-memory store, which
    /// elects a leader among the tasks of this process only.
    pub fn lock_store(mut self, store: impl LockStore) -> Self {
        self.lock_store = Some(Arc::new(store));
        self
    }

    /// Runs leader tasks and sagas with in-memory lock and saga stores even
    /// though a transport is configured: say so for a service that runs as
    /// one copy. Without it, [`start`](CatgaBuilder::start) refuses that
    /// setup, because every copy of a scaled service would lead at once.
    pub fn single_copy(mut self) -> Self {
        self.single_copy = true;
        self
    }

    /// Checks the registrations and builds a mediator for in-process dispatch
    /// (and for sending through a transport it does not serve).
    ///
    /// Fails with [`ErrorKind::DuplicateHandler`] when two handlers claim one request
    /// type, or two message types claim one wire name, naming both sides; with
    /// [`ErrorKind::Config`] when a type routed remote has no transport, or
    /// when something must run in the background (handlers to serve over a
    /// transport, an outbox relay, leader tasks, sagas): such a peer is
    /// started with [`CatgaBuilder::start`], which returns the [`Peer`] that
    /// owns that work.
    pub fn build(self) -> Result<Mediator> {
        let (mediator, plan) = self.assemble()?;
        let mut background = Vec::new();
        let serves = !mediator.inner.inbound_requests.is_empty()
            || !mediator.inner.inbound_events.is_empty();
        if mediator.inner.transport.is_some() && serves {
            background.push("handlers to serve over the transport");
        }
        if plan.outbox.is_some() {
            background.push("an outbox relay");
        }
        if !plan.leader_tasks.is_empty() {
            background.push("leader tasks or sagas");
        }
        if !background.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "this peer has {}, which run in the background: call `.start().await` \
                     instead of `.build()`; it returns the running `Peer`",
                    background.join(", ")
                ),
            ));
        }
        Ok(mediator)
    }

    /// Checks the registrations like [`build`](CatgaBuilder::build) and
    /// starts the peer: the outbox relay, leader tasks and saga coordinators
    /// begin, and the transport's subscriptions are live when it returns.
    ///
    /// Also fails with [`ErrorKind::Config`] when a transport is configured
    /// and leader tasks or sagas would use the in-memory lock or saga store
    /// (every copy would lead), unless [`single_copy`](CatgaBuilder::single_copy)
    /// says that is meant.
    pub async fn start(self) -> Result<Peer> {
        let (mediator, plan) = self.assemble()?;
        Peer::start(mediator, plan).await
    }

    /// The checks, then the dispatch state and the runtime's plan.
    fn assemble(self) -> Result<(Mediator, Plan)> {
        let errors = self.check();
        if let Some(error) = combined(errors) {
            return Err(error);
        }
        let (requests, inbound_requests) =
            request_routes(self.requests, &self.behaviors, &self.remote);
        let (events, inbound_events) = event_routes(self.events, &self.behaviors);
        let lock_store = self
            .lock_store
            .unwrap_or_else(|| Arc::new(MemoryLockStore::new()));
        let saga_store = self
            .saga_store
            .unwrap_or_else(|| Arc::new(MemorySagaStore::new()));
        let saga_wake = Arc::new(tokio::sync::Notify::new());
        let mut leader_tasks = self.leader_tasks;
        let mut resources = self.resources;
        for runner in &self.sagas {
            leader_tasks.push(runner.leader_task(saga_store.clone(), saga_wake.clone()));
            runner.bind(saga_store.clone(), saga_wake.clone(), &mut resources);
        }
        let mediator = Mediator {
            inner: Arc::new(Inner {
                requests,
                events,
                inbound_requests,
                inbound_events,
                transport: self.transport,
                format: self.format,
                service: self.service,
                peer_id: new_id(),
                request_timeout: self.request_timeout,
                max_inbound_timeout: self.max_inbound_timeout,
                retry_budget: self.retry_budget,
                resources,
                fence_store: lock_store.clone(),
                holds_events: self.outbox.is_some(),
            }),
        };
        let plan = Plan {
            leader_tasks,
            lock_store,
            outbox: self.outbox.and_then(|(store, relay)| Some((store, relay?))),
            shutdown_grace: self.shutdown_grace,
            saga_store,
        };
        Ok((mediator, plan))
    }

    /// Every registration error, all at once.
    fn check(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        let mut seen: HashMap<TypeId, &PendingRequest> = HashMap::new();
        let mut names: HashMap<&'static str, &PendingRequest> = HashMap::new();
        for p in &self.requests {
            if let Some(first) = seen.get(&p.type_id) {
                errors.push(Error::new(
                    ErrorKind::DuplicateHandler,
                    format!(
                        "request `{}` ({}) has two handlers: `{}` and `{}`; a request has exactly \
                         one handler, remove one registration",
                        p.name, p.type_name, first.handler_name, p.handler_name
                    ),
                ).with_message_name(p.name));
                continue;
            }
            if let Some(first) = names.get(p.name) {
                errors.push(Error::new(
                    ErrorKind::DuplicateHandler,
                    format!(
                        "request types `{}` (handler `{}`) and `{}` (handler `{}`) share the wire \
                         name `{}`; give one of them another `NAME`",
                        first.type_name, first.handler_name, p.type_name, p.handler_name, p.name
                    ),
                ).with_message_name(p.name));
                continue;
            }
            seen.insert(p.type_id, p);
            names.insert(p.name, p);
        }
        let registered = self.requests.iter().map(|p| p.name);
        for name in registered.chain(self.events.iter().map(|(_, p)| p.name)) {
            if let Err(e) = crate::message::validate_name(name) {
                errors.push(e);
            }
        }
        let mut event_names: HashMap<&'static str, &'static str> = HashMap::new();
        for (_, p) in &self.events {
            errors.extend(same_names(
                &format!("handlers of event `{}`", p.name),
                (p.names)(&*p.handlers).into_iter(),
            ));
            if let Some(first) = event_names.insert(p.name, p.type_name) {
                errors.push(
                    Error::new(
                        ErrorKind::DuplicateHandler,
                        format!(
                            "event types `{first}` and `{}` share the wire name `{}`; give one of \
                         them another `NAME`",
                            p.type_name, p.name
                        ),
                    )
                    .with_message_name(p.name),
                );
            }
        }
        if self.transport.is_none() {
            for (_, name) in &self.remote {
                errors.push(Error::new(
                    ErrorKind::Config,
                    format!("`{name}` is routed remote but no transport is configured; add `.transport(..)`"),
                ).with_message_name(*name));
            }
        }
        errors.extend(same_names(
            "leader tasks",
            self.leader_tasks.iter().map(|t| &*t.name),
        ));
        errors.extend(same_names("sagas", self.sagas.iter().map(|s| s.name())));
        errors.extend(self.distributed_stores());
        errors
    }

    /// With a transport, leader tasks and sagas need shared stores.
    fn distributed_stores(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        if self.transport.is_none() || self.single_copy {
            return errors;
        }
        let leads = !self.leader_tasks.is_empty() || !self.sagas.is_empty();
        if leads && self.lock_store.is_none() {
            errors.push(Error::new(
                ErrorKind::Config,
                "leader tasks or sagas with a transport need a lock store shared by every copy \
                 (`.lock_store(..)`, e.g. Redis): with the in-memory default every copy leads. \
                 For a service that runs as one copy, say so with `.single_copy()`",
            ));
        }
        if !self.sagas.is_empty() && self.saga_store.is_none() {
            errors.push(Error::new(
                ErrorKind::Config,
                "sagas with a transport need a saga store shared by every copy \
                 (`.saga_store(..)`, e.g. Redis): in memory, a saga would be lost with its copy. \
                 For a service that runs as one copy, say so with `.single_copy()`",
            ));
        }
        errors
    }
}

/// One error for many: the first, with every one in [`Error::related`].
fn combined(mut errors: Vec<Error>) -> Option<Error> {
    if errors.is_empty() {
        return None;
    }
    let first = errors.remove(0);
    Some(if errors.is_empty() {
        first
    } else {
        let mut all = vec![first.clone()];
        all.extend(errors);
        first.with_related(all)
    })
}

/// The typed route of every request, and the way in from a transport by name.
fn request_routes(
    pending: Vec<PendingRequest>,
    behaviors: &[ScopedBehavior],
    remote: &[(TypeId, &'static str)],
) -> (
    TypeMap<Box<dyn Any + Send + Sync>>,
    HashMap<&'static str, InboundRequestFn>,
) {
    let mut routes: TypeMap<Box<dyn Any + Send + Sync>> = TypeMap::default();
    let mut inbound = HashMap::new();
    for p in pending {
        let routed_remote = remote.iter().any(|(id, _)| *id == p.type_id);
        routes.insert(p.type_id, (p.make)(behaviors, routed_remote));
        inbound.insert(p.name, p.inbound);
    }
    (routes, inbound)
}

/// The typed route of every event, and the way in from a transport by name.
fn event_routes(
    pending: Vec<(TypeId, PendingEvents)>,
    behaviors: &[ScopedBehavior],
) -> (
    TypeMap<Box<dyn Any + Send + Sync>>,
    HashMap<&'static str, InboundEventFn>,
) {
    let mut routes: TypeMap<Box<dyn Any + Send + Sync>> = TypeMap::default();
    let mut inbound = HashMap::new();
    for (id, p) in pending {
        routes.insert(id, (p.finish)(p.handlers, behaviors));
        inbound.insert(p.name, p.inbound);
    }
    (routes, inbound)
}

/// A build error for every name used twice among `what`.
fn same_names<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Vec<Error> {
    let mut seen = std::collections::HashSet::new();
    names
        .filter(|name| !seen.insert(*name))
        .map(|name| {
            Error::new(
                ErrorKind::DuplicateHandler,
                format!("two {what} are named `{name}`; give each its own name"),
            )
        })
        .collect()
}

fn finish_events<E: Event>(
    handlers: Box<dyn Any + Send>,
    behaviors: &[ScopedBehavior],
) -> Box<dyn Any + Send + Sync> {
    // Always an `EventHandlers<E>`: the list is keyed by `TypeId::of::<E>()`.
    let handlers = handlers
        .downcast::<EventHandlers<E>>()
        .map(|b| *b)
        .unwrap_or_default();
    let pipeline = pipeline_for(behaviors, TypeId::of::<E>());
    let mut position = 0;
    let slots: Box<[EventSlot<E>]> = handlers
        .into_iter()
        .map(|(handler, type_name, name)| {
            let id = match name {
                Some(name) => format!("{}#{name}", E::NAME),
                None => {
                    position += 1;
                    format!("{}#{}", E::NAME, position - 1)
                }
            };
            EventSlot {
                handler,
                id: HandlerId {
                    id: id.into(),
                    type_name,
                },
                pipeline: pipeline.clone(),
            }
        })
        .collect();
    Box::new(EventRoute::<E> {
        detached: detaches(&pipeline) && !slots.is_empty(),
        slots,
        info: MessageInfo::new::<E, ()>(MessageKind::Event),
    })
}

/// The registered names of `E`'s handlers.
fn handler_names<E: Event>(handlers: &(dyn Any + Send)) -> Vec<&'static str> {
    handlers
        .downcast_ref::<EventHandlers<E>>()
        .map(|list| list.iter().filter_map(|(_, _, name)| *name).collect())
        .unwrap_or_default()
}
