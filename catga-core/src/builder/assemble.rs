//! From registrations to a mediator and a plan: checks, routes, `build`,
//! `start`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::dispatch::behavior::SharedBehavior;
use crate::dispatch::behavior::idempotency::Idempotency;
use crate::dispatch::handle::{InboundEventFn, InboundRequestFn, Inner, Mediator, TypeMap};
use crate::dispatch::route::ScopedBehavior;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::new_id;
use crate::runtime::saga::MemorySagaStore;
use crate::runtime::{Peer, Plan};
use crate::store::MemoryLockStore;

use super::{CatgaBuilder, PendingEvents, PendingRequest};

impl CatgaBuilder {
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
        let behaviors = self.pipelines();
        let mut durable_requests: Vec<&'static str> = self
            .requests
            .iter()
            .filter(|p| p.durable)
            .map(|p| p.name)
            .collect();
        durable_requests.sort_unstable();
        let (requests, inbound_requests) = request_routes(self.requests, &behaviors, &self.remote);
        let mut reliable_events: Vec<&'static str> = self
            .events
            .iter()
            .filter(|(_, p)| p.reliable)
            .map(|(_, p)| p.name)
            .collect();
        reliable_events.sort_unstable();
        let (events, inbound_events) = event_routes(self.events, &behaviors);
        let unshared_fences = self.lock_store.is_none();
        let lock_store = self
            .lock_store
            .unwrap_or_else(|| Arc::new(MemoryLockStore::new()));
        let saga_store = self
            .saga_store
            .unwrap_or_else(|| Arc::new(MemorySagaStore::new()));
        let mut leader_tasks = self.leader_tasks;
        let mut resources = self.resources;
        for runner in &self.sagas {
            // What its handle starts here goes straight to its coordinator.
            let starts = Arc::default();
            leader_tasks.push(runner.leader_task(saga_store.clone(), Arc::clone(&starts)));
            runner.bind(saga_store.clone(), starts, &mut resources);
        }
        let mediator = Mediator {
            inner: Arc::new(Inner {
                requests,
                events,
                inbound_requests,
                inbound_events,
                reliable_events,
                durable_requests,
                transport: self.transport,
                format: self.format,
                service: self.service,
                peer_id: new_id(),
                request_timeout: self.request_timeout,
                max_inbound_timeout: self.max_inbound_timeout,
                retry_budget: self.retry_budget,
                resources,
                fence_store: lock_store.clone(),
                unshared_fences: unshared_fences.into(),
                holds_events: self.outbox.is_some(),
                relay_wake: Arc::default(),
                terms: Default::default(),
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

    /// The behaviors in order, with the idempotency of every idempotent
    /// type last (innermost), once per type.
    fn pipelines(&self) -> Vec<ScopedBehavior> {
        let mut behaviors = self.behaviors.clone();
        if let Some(idempotency) = &self.idempotency {
            let shared: SharedBehavior = Arc::new(idempotency.clone());
            let mut wrapped = std::collections::HashSet::new();
            for type_id in self.idempotent_types() {
                if wrapped.insert(type_id) {
                    behaviors.push((Some(type_id), shared.clone()));
                }
            }
        }
        behaviors
    }

    /// Every message type declared idempotent, on the type or here.
    fn idempotent_types(&self) -> impl Iterator<Item = TypeId> + '_ {
        let requests = self
            .requests
            .iter()
            .filter(|p| p.idempotent)
            .map(|p| p.type_id);
        let events = self
            .events
            .iter()
            .filter(|(_, p)| p.idempotent)
            .map(|(id, _)| *id);
        requests
            .chain(events)
            .chain(self.idempotent.iter().map(|(id, _)| *id))
    }

    /// Idempotency declared without a store, or twice on one route; an
    /// idempotency store whose held-back events no relay would read.
    fn idempotency_errors(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        if let (Some(held), Some((relayed, _))) = (&self.idempotency_outbox, &self.outbox) {
            let held = held.outbox_identity();
            let relayed = relayed.outbox_identity();
            if let (Some(held), Some(relayed)) = (held, relayed)
                && held != relayed
            {
                errors.push(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the idempotency store keeps the events its handlers publish in its own \
                         outbox ({held}), but the outbox setting (`.outbox`, `.outbox_with` or \
                         `.outbox_without_relay`) names another one ({relayed}): those events \
                         would never be relayed; give the outbox setting the idempotency store \
                         (or a clone of it)"
                    ),
                ));
            }
        }
        if self.idempotency.is_none() {
            let declared: Vec<&str> = self
                .requests
                .iter()
                .filter(|p| p.idempotent)
                .map(|p| p.name)
                .chain(
                    self.events
                        .iter()
                        .filter(|(_, p)| p.idempotent)
                        .map(|(_, p)| p.name),
                )
                .chain(self.idempotent.iter().map(|(_, name)| *name))
                .collect();
            if !declared.is_empty() {
                errors.push(Error::new(
                    ErrorKind::Config,
                    format!(
                        "{} declared idempotent, but no idempotency store is configured: add \
                         `.idempotency(store)` (`MemoryIdempotencyStore` for one process, \
                         `RedisStore` for a cluster)",
                        declared.join(", ")
                    ),
                ));
            }
        }
        let pipelines = self.pipelines();
        let idempotency = TypeId::of::<Idempotency>();
        let names = self
            .requests
            .iter()
            .map(|p| (p.type_id, p.name, &p.carried[..]))
            .chain(self.events.iter().map(|(id, p)| (*id, p.name, &[][..])));
        for (type_id, name, carried) in names {
            let count = pipelines
                .iter()
                .filter(|(scope, b)| {
                    scope.is_none_or(|s| s == type_id) && b.behavior_type() == idempotency
                })
                .count()
                + carried.iter().filter(|t| **t == idempotency).count();
            if count > 1 {
                errors.push(
                    Error::new(
                        ErrorKind::Config,
                        format!(
                            "`{name}` is wrapped in {count} idempotency behaviors: the inner one \
                             would wait for the outer one's claim; declare idempotency once \
                             (on the type, or with `.idempotent::<M>()`, or as a behavior)"
                        ),
                    )
                    .with_message_name(name),
                );
            }
        }
        errors
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
        errors.extend(self.deferred.iter().cloned());
        for (type_id, type_name, who) in &self.required {
            if !self.resources.contains_key(type_id) {
                errors.push(Error::new(
                    ErrorKind::Config,
                    format!(
                        "handler `{who}` takes a `{type_name}` as its state, but none was given: \
                         add `.resource(..)` with one to the builder"
                    ),
                ));
            }
        }
        errors.extend(self.distributed_stores());
        errors.extend(self.idempotency_errors());
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
