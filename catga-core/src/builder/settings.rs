//! The transport, the stores, idempotency, sagas, leader tasks and the
//! peer's settings.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::RetryBudget;
use crate::codec::Format;
use crate::dispatch::behavior::idempotency::Idempotency;
use crate::error::Result;
use crate::message::Message;
use crate::runtime::leader::{LeaderContext, LeaderTask};
use crate::runtime::relay::RelayOptions;
use crate::runtime::saga::{Saga, SagaData, SagaStore};
use crate::store::{IdempotencyStore, LockStore, OutboxStore};
use crate::transport::Transport;

use super::CatgaBuilder;

impl CatgaBuilder {
    /// Shares `value` with every handler: read it with
    /// [`Context::resource`](crate::Context::resource). One value per type.
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(TypeId::of::<T>(), Arc::new(value));
        self.resource_names
            .insert(TypeId::of::<T>(), std::any::type_name::<T>());
        self
    }

    /// Says that handler `who` takes a `T` as its state (a `#[handler]`
    /// function's `state: &T` parameter does): [`build`](CatgaBuilder::build)
    /// and [`start`](CatgaBuilder::start) fail, naming both, when no
    /// [`resource`](CatgaBuilder::resource) of type `T` was given, instead of
    /// the handler failing at its first message.
    pub fn requires<T: Send + Sync + 'static>(mut self, who: &'static str) -> Self {
        self.required
            .push((TypeId::of::<T>(), std::any::type_name::<T>(), who));
        self
    }

    /// Makes message types declared idempotent (`Message::IDEMPOTENT`, or
    /// [`CatgaBuilder::idempotent`]) take effect once per message id, with
    /// `store` keeping claims, results and the outbox, relayed by this peer:
    /// events their handlers publish are stored with the result and
    /// published after (see [`Idempotency`] for the rules). One call, one
    /// store: the store the behavior writes events to is the store relayed.
    ///
    /// Each such type is wrapped once, innermost (after every behavior
    /// added with `.behavior(..)`, so a `Retry` outside it re-runs only
    /// attempts that failed). Defaults: 30 s lease, 24 h retention, 5 s wait
    /// ([`CatgaBuilder::idempotency_with`] changes them).
    ///
    /// ```
    /// # use catga_core::{Catga, Message, Request, store::MemoryIdempotencyStore};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Clone, Serialize, Deserialize)]
    /// struct Charge { cents: u64 }
    /// impl Message for Charge {
    ///     const NAME: &'static str = "billing.Charge";
    ///     const IDEMPOTENT: bool = true; // `#[catga(idempotent)]` when derived
    /// }
    /// impl Request for Charge { type Response = u64; }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
    /// let peer = Catga::builder()
    ///     .idempotency(MemoryIdempotencyStore::new()) // RedisStore in a cluster
    ///     .request_fn(|c: Charge, _| async move { Ok(c.cents) })
    ///     .start()
    ///     .await?;
    /// # peer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn idempotency<S: IdempotencyStore + OutboxStore>(self, store: S) -> Self {
        self.idempotency_with(store, |i| i)
    }

    /// Like [`CatgaBuilder::idempotency`], with the behavior's settings
    /// changed by `configure` (lease, retention, wait, ...).
    pub fn idempotency_with<S: IdempotencyStore + OutboxStore>(
        mut self,
        store: S,
        configure: impl FnOnce(Idempotency) -> Idempotency,
    ) -> Self {
        let store = Arc::new(store);
        self.idempotency = Some(configure(Idempotency::new(store.clone())));
        self.idempotency_outbox = Some(store.clone());
        // An outbox set before stays (with its relay setting); build()
        // checks that it is this store's.
        if self.outbox.is_none() {
            self.outbox = Some((store, Some(RelayOptions::default())));
        }
        self
    }

    /// Declares `M` idempotent here, for a type that does not declare it
    /// itself (see [`Message::IDEMPOTENT`]). Needs
    /// [`CatgaBuilder::idempotency`].
    pub fn idempotent<M: Message>(mut self) -> Self {
        self.idempotent.push((TypeId::of::<M>(), M::NAME));
        self
    }

    /// Runs an outbox relay on this peer for `store` (see [`relay`](crate::relay)).
    /// Use the store the idempotency behavior writes to: events its handlers
    /// publish are held back and stored with their result, then relayed.
    /// `build()` fails when the two are known to be different outboxes
    /// ([`OutboxStore::outbox_identity`](crate::store::OutboxStore::outbox_identity)):
    /// the held-back events would never be relayed.
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
    /// (in the lock store), and its [`SagaHandle`](crate::saga::SagaHandle) starts it.
    pub fn saga<D: SagaData>(mut self, saga: Saga<D>) -> Self {
        self.sagas.push(Arc::new(Arc::new(saga)));
        self
    }

    /// Where saga state lives. Default: in memory (one peer).
    pub fn saga_store(mut self, store: impl SagaStore) -> Self {
        self.saga_store = Some(Arc::new(store));
        self
    }

    /// Carries requests without a local handler, and every event, to other peers.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Name of this service; copies of one service share its events. Default `"catga"`.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.settings.push("service");
        self.service = name.into();
        self
    }

    /// Payload format written to the transport. Default MessagePack.
    pub fn format(mut self, format: Format) -> Self {
        self.settings.push("format");
        self.format = format;
        self
    }

    /// How long a remote request waits when the caller set no deadline. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.push("request_timeout");
        self.request_timeout = timeout;
        self
    }

    /// The longest a handler of a message from another peer may take, whatever
    /// deadline its sender set (default 60 s): a client cannot hold this
    /// peer's capacity for longer. A message that arrives past its deadline
    /// is answered with a timeout (code `catga.expired`) and not handled.
    pub fn max_inbound_timeout(mut self, timeout: Duration) -> Self {
        self.settings.push("max_inbound_timeout");
        self.max_inbound_timeout = timeout;
        self
    }

    /// The budget every retry of this peer draws from: the [`Retry`]
    /// behavior, remote sends answered `overloaded`, saga steps. Default: 20 %
    /// of first attempts, at least 10 retries per second.
    ///
    /// [`Retry`]: crate::behavior::retry::Retry
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.settings.push("retry_budget");
        self.retry_budget = budget;
        self
    }

    /// The longest [`Peer::shutdown`](crate::Peer::shutdown) waits for leader tasks, the
    /// outbox relay's last pass and the transport's drain (default 30 s),
    /// whatever the state of NATS and Redis.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.push("shutdown_grace");
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
        self.settings.push("single_copy");
        self.single_copy = true;
        self
    }
}
