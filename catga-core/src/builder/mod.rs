//! The fluent builder: registrations in, a [`Mediator`](crate::Mediator)
//! (`build`) or a running [`Peer`](crate::Peer) (`start`) out.
//!
//! - `mod.rs`: [`CatgaBuilder`] and what it holds.
//! - `handlers.rs`: handlers and behaviors.
//! - `settings.rs`: the transport, the stores, idempotency, sagas, leader
//!   tasks and the peer's settings.
//! - `modules.rs`: [`CatgaBuilder::merge`], a service composed of modules.
//! - `assemble.rs`: the checks, then `build` and `start` in named steps.

mod assemble;
mod handlers;
mod modules;
mod settings;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::RetryBudget;
use crate::codec::Format;
use crate::dispatch::behavior::idempotency::Idempotency;
use crate::dispatch::handle::{InboundEventFn, InboundRequestFn, TypeMap};
use crate::dispatch::handler::DynEventHandler;
use crate::dispatch::route::ScopedBehavior;
use crate::error::Error;
use crate::runtime::leader::LeaderTask;
use crate::runtime::relay::RelayOptions;
use crate::runtime::saga::{SagaRunner, SagaStore};
use crate::store::{LockStore, OutboxStore};
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
    /// `R::IDEMPOTENT`.
    idempotent: bool,
    /// `R::DURABLE`.
    durable: bool,
    /// The types of the behaviors the handler carries (a stacked handler).
    carried: Vec<TypeId>,
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
    /// `E::IDEMPOTENT`.
    idempotent: bool,
    /// `E::RELIABLE`.
    reliable: bool,
    /// Appends the handlers of another `PendingEvents` of the same type.
    append: fn(&mut Box<dyn Any + Send>, Box<dyn Any + Send>),
}

/// Each handler with its type name and, when given, its registered name.
type EventHandlers<E> = Vec<(
    Box<dyn DynEventHandler<E>>,
    &'static str,
    Option<&'static str>,
)>;

/// Registers handlers, behaviors, a transport and stores;
/// [`build`](CatgaBuilder::build) checks the whole set and returns a
/// [`Mediator`](crate::Mediator) for in-process dispatch, and
/// [`start`](CatgaBuilder::start) a running [`Peer`](crate::Peer).
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
    /// The idempotency every idempotent message type gets.
    idempotency: Option<Idempotency>,
    /// Where that idempotency's store keeps held-back events: the outbox a
    /// relay must read.
    idempotency_outbox: Option<Arc<dyn OutboxStore>>,
    /// Types declared idempotent on the builder.
    idempotent: Vec<(TypeId, &'static str)>,
    /// Names of the settings called on this builder (a module must set none).
    settings: Vec<&'static str>,
    /// Type names of the resources, by type.
    resource_names: HashMap<TypeId, &'static str>,
    /// Errors found while merging modules, reported at build.
    deferred: Vec<Error>,
    /// Resources handlers take as state: type, type name, handler.
    required: Vec<(TypeId, &'static str, &'static str)>,
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
            idempotency: None,
            idempotency_outbox: None,
            idempotent: Vec::new(),
            settings: Vec::new(),
            resource_names: HashMap::new(),
            deferred: Vec::new(),
            required: Vec::new(),
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
