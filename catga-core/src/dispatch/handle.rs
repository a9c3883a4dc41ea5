//! The [`Mediator`] handle and the state every clone of it shares.
//!
//! This file holds what `build()` fixed and reads it; what the mediator
//! *does* (send, publish) lives in `mediator.rs`, above the routes it runs.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::backoff::RetryBudget;
use crate::codec::Format;
use crate::error::{Error, ErrorKind, Result};
use crate::store::LockStore;
use crate::transport::{Transport, WireMessage, WireReply};

/// How a transport's request of one wire name is decoded and dispatched.
pub(crate) type InboundRequestFn =
    fn(Mediator, WireMessage) -> BoxFuture<'static, Result<WireReply>>;
/// How a transport's event of one wire name is decoded and dispatched.
pub(crate) type InboundEventFn = fn(Mediator, WireMessage) -> BoxFuture<'static, Result<()>>;

/// Hasher for maps keyed by `TypeId`: the id already is a hash, so use its bits.
#[derive(Default)]
pub(crate) struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // TypeId hashes through write_u64 today; stay correct if that changes.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `TypeId`-keyed map (routes, resources).
pub(crate) type TypeMap<V> = HashMap<TypeId, V, BuildHasherDefault<TypeIdHasher>>;

/// A leader term this peer holds: while it is live, no newer fence of its
/// lock can exist (the term ends by this peer's clock before the lease could
/// pass to another peer).
pub(crate) trait LiveTerm: Send + Sync {
    /// Whether the term still holds.
    fn live(&self) -> bool;
}

/// The leader terms this peer holds now: lock name → (fence, term).
pub(crate) type Terms = HashMap<Arc<str>, (u64, Arc<dyn LiveTerm>)>;

/// [`Terms`], shared by the leader tasks and dispatch.
pub(crate) type LocalTerms = std::sync::Mutex<Terms>;

/// Everything `build()` fixed for dispatch; immutable afterwards.
pub(crate) struct Inner {
    /// `RequestRoute<R>` by `TypeId::of::<R>()`, erased.
    pub(crate) requests: TypeMap<Box<dyn Any + Send + Sync>>,
    /// `EventRoute<E>` by `TypeId::of::<E>()`, erased.
    pub(crate) events: TypeMap<Box<dyn Any + Send + Sync>>,
    pub(crate) inbound_requests: HashMap<&'static str, InboundRequestFn>,
    pub(crate) inbound_events: HashMap<&'static str, InboundEventFn>,
    /// Names of the handled event types declared reliable.
    pub(crate) reliable_events: Vec<&'static str>,
    /// Names of the handled request types declared durable.
    pub(crate) durable_requests: Vec<&'static str>,
    pub(crate) transport: Option<Arc<dyn Transport>>,
    pub(crate) format: Format,
    pub(crate) service: String,
    pub(crate) peer_id: Uuid,
    pub(crate) request_timeout: Duration,
    /// The longest budget an incoming message gets, whatever its sender asked.
    pub(crate) max_inbound_timeout: Duration,
    /// What every retry of this peer draws from.
    pub(crate) retry_budget: RetryBudget,
    pub(crate) resources: TypeMap<Arc<dyn Any + Send + Sync>>,
    /// Where a message's leader fence is checked (the leaders' lock store).
    pub(crate) fence_store: Arc<dyn LockStore>,
    /// No lock store was configured, so `fence_store` is this peer's own,
    /// in memory: with a transport, fences from other peers' leaders are
    /// checked against nothing (said once, see `check_fence`).
    pub(crate) unshared_fences: std::sync::atomic::AtomicBool,
    /// Events published under idempotency go to the outbox with the result.
    pub(crate) holds_events: bool,
    /// Wakes this peer's outbox relay when a handler stored events.
    pub(crate) relay_wake: Arc<tokio::sync::Notify>,
    /// Leader terms this peer holds (a message stamped with one of them
    /// needs no fence lookup in the store).
    pub(crate) terms: LocalTerms,
}

/// Dispatches messages: a cheap `Clone` handle, built by [`Catga::builder`](crate::Catga::builder).
///
/// - [`send`](Mediator::send) runs the one handler of a request: here when this
///   peer has it, otherwise on a peer reached through the transport.
/// - [`publish`](Mediator::publish) runs every local handler of an event
///   concurrently and hands the event to the transport for other services.
///
/// A mediator only dispatches. Serving a transport, the outbox relay, leader
/// tasks and sagas run in a started [`Peer`](crate::runtime::Peer), which
/// hands out its mediator.
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
    /// The lock store a message's leader fence is checked against.
    pub(crate) fn fence_store(&self) -> &dyn LockStore {
        &*self.inner.fence_store
    }

    /// Records that this peer leads `name` with `fence` while `term` is live.
    pub(crate) fn hold_term(&self, name: Arc<str>, fence: u64, term: Arc<dyn LiveTerm>) {
        self.terms().insert(name, (fence, term));
    }

    /// Forgets the term of `name` with `fence` (a later term stays).
    pub(crate) fn end_term(&self, name: &str, fence: u64) {
        let mut terms = self.terms();
        if terms.get(name).is_some_and(|(f, _)| *f == fence) {
            terms.remove(name);
        }
    }

    /// Whether this peer leads `name` with `fence` now: then no newer fence
    /// exists, and a message stamped with it is current.
    pub(crate) fn holds_term(&self, name: &str, fence: u64) -> bool {
        self.terms()
            .get(name)
            .is_some_and(|(f, term)| *f == fence && term.live())
    }

    fn terms(&self) -> std::sync::MutexGuard<'_, Terms> {
        self.inner.terms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes this peer's outbox relay (a handler stored events).
    pub(crate) fn wake_relay(&self) {
        self.inner.relay_wake.notify_one();
    }

    /// What wakes this peer's outbox relay.
    pub(crate) fn relay_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.relay_wake.clone()
    }

    /// The transport, if any.
    pub(crate) fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.inner.transport.as_ref()
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

    /// Waits until what this peer published through its transport has
    /// reached the server.
    pub async fn flush_transport(&self) -> Result<()> {
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

    /// Whether events published under idempotency are held back and stored
    /// in the outbox with the handler's result (an outbox is configured).
    pub fn has_outbox(&self) -> bool {
        self.inner.holds_events
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
    pub fn handles<R: crate::Request>(&self) -> bool {
        self.inner.requests.contains_key(&TypeId::of::<R>())
    }

    /// The payload format this peer writes.
    pub fn format(&self) -> Format {
        self.inner.format
    }
}
