//! [`Peer`]: a started peer, owning everything that runs in its background.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::dispatch::handle::Mediator;
use crate::dispatch::inbound::serving;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::leader::{self, LeaderTask, Leading};
use crate::runtime::relay::{self, RelayOptions};
use crate::runtime::saga::{SagaData, SagaHandle, SagaState, SagaStore};
use crate::store::{LockStore, OutboxStore};

/// What a peer runs besides dispatch, fixed by the builder.
pub(crate) struct Plan {
    pub(crate) leader_tasks: Vec<LeaderTask>,
    pub(crate) lock_store: Arc<dyn LockStore>,
    pub(crate) outbox: Option<(Arc<dyn OutboxStore>, RelayOptions)>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) saga_store: Arc<dyn SagaStore>,
}

/// A started peer: serves its transport, relays its outbox, competes for its
/// leader tasks and coordinates its sagas, until [`Peer::shutdown`].
///
/// Made by [`CatgaBuilder::start`](crate::CatgaBuilder::start). It owns every
/// background task: shut it down explicitly, so that leader locks are handed
/// over, the outbox gets its last pass and the transport drains. A peer
/// dropped without `shutdown` stops its tasks and its transport without
/// waiting for them, and logs a warning.
///
/// A `Peer` derefs to its [`Mediator`]: `peer.send(..)` and `peer.publish(..)`
/// dispatch; [`Peer::mediator`] gives a handle to keep (a clone stays usable
/// after the peer stops, for local dispatch).
///
/// ```
/// # use catga_core::{Catga, Message, Request};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct Ping;
/// # impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
/// # impl Request for Ping { type Response = String; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
/// let peer = Catga::builder()
///     .request_fn(|_: Ping, _| async { Ok("pong".to_owned()) })
///     .start()
///     .await?;
/// assert_eq!(peer.send(Ping).await?, "pong");
/// peer.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a peer stops its background work when dropped: keep it, and call `shutdown().await` at the end"]
pub struct Peer {
    mediator: Mediator,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    leading: Leading,
    outbox: Option<Arc<dyn OutboxStore>>,
    saga_store: Arc<dyn SagaStore>,
    lock_store: Arc<dyn LockStore>,
    /// Names of every leader task this peer competes for.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    tasks_named: Vec<Arc<str>>,
    grace: Duration,
    stopped: AtomicBool,
}
/// One check of [`Peer::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `transport`, `lock_store`, `outbox`, `saga_store`.
    pub name: &'static str,
    /// `None` when it answered in time; otherwise why not.
    pub problem: Option<String>,
}

/// What [`Peer::health`] found: ready when every check passed. An HTTP layer
/// serves it as a readiness probe (503 with the problems when not ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Health {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.problem.is_none())
    }

    /// The failed checks, `name: problem` each, one per line.
    pub fn problems(&self) -> String {
        self.checks
            .iter()
            .filter_map(|c| c.problem.as_ref().map(|p| format!("{}: {p}", c.name)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `check` within `timeout` as check `name`.
async fn within(
    name: &'static str,
    timeout: Duration,
    check: impl std::future::Future<Output = Result<()>>,
) -> Check {
    let problem = match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {timeout:?}")),
    };
    Check { name, problem }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("mediator", &self.mediator)
            .field("tasks", &self.tasks.len())
            .field("leading", &self.leading.names())
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Peer {
    /// Starts what `plan` names for `mediator`: the outbox relay, the leader
    /// tasks, then serving the transport (its subscriptions are live when
    /// this returns).
    pub(crate) async fn start(mediator: Mediator, plan: Plan) -> Result<Peer> {
        let peer = Peer {
            mediator,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            leading: Leading::default(),
            outbox: plan.outbox.as_ref().map(|(store, _)| store.clone()),
            saga_store: plan.saga_store,
            lock_store: plan.lock_store.clone(),
            tasks_named: plan.leader_tasks.iter().map(|t| t.name.clone()).collect(),
            grace: plan.shutdown_grace,
            stopped: AtomicBool::new(false),
        };
        if let Some((store, options)) = plan.outbox {
            peer.tasks.spawn(relay::run(
                store,
                peer.mediator.clone(),
                options,
                peer.shutdown.clone(),
            ));
        }
        for task in plan.leader_tasks {
            peer.tasks.spawn(leader::run(
                task,
                plan.lock_store.clone(),
                peer.mediator.clone(),
                peer.leading.clone(),
                peer.shutdown.clone(),
            ));
        }
        if let Some(transport) = peer.mediator.transport() {
            let (spec, inbound) = serving(&peer.mediator);
            // On failure the peer is dropped here: its tasks stop.
            transport.start(spec, inbound).await?;
        }
        Ok(peer)
    }

    /// The mediator of this peer (a clone is a handle to keep).
    pub fn mediator(&self) -> &Mediator {
        &self.mediator
    }

    /// The [`SagaHandle`] of the saga registered with data type `D` (see
    /// [`SagaHandle::of`]).
    pub fn saga<D: SagaData>(&self) -> Result<&SagaHandle<D>> {
        SagaHandle::of(&self.mediator)
    }

    /// The state of saga `id`, of whichever definition: status, current
    /// step, data and history.
    pub async fn saga_state(&self, id: Uuid) -> Result<Option<SagaState>> {
        self.saga_store.load(id).await
    }

    /// Checks what this peer depends on, each within `timeout`: the
    /// transport (connected, every subscription serving), the lock store,
    /// the outbox and the saga store (each asked a cheap read). For a
    /// readiness probe; liveness needs no check (the process answers).
    pub async fn health(&self, timeout: Duration) -> Health {
        let mut checks = vec![Check {
            name: "transport",
            problem: self.mediator.ready().err().map(|e| e.to_string()),
        }];
        let lock = async {
            self.lock_store
                .current_fence("catga.health")
                .await
                .map(drop)
        };
        checks.push(within("lock_store", timeout, lock).await);
        if let Some(outbox) = &self.outbox {
            let backlog = async { outbox.backlog().await.map(drop) };
            checks.push(within("outbox", timeout, backlog).await);
        }
        let sagas = async { self.saga_store.load(Uuid::nil()).await.map(drop) };
        checks.push(within("saga_store", timeout, sagas).await);
        Health { checks }
    }

    /// Records this peer's gauges through the `metrics` facade (feature
    /// `metrics`): `catga_outbox_backlog`, `catga_leader{task}` (1 while this
    /// peer leads the task, 0 otherwise), `catga_retry_denied_total`, and per
    /// saga `catga_sagas_unfinished{saga}` and `catga_sagas_failed{saga}`.
    /// Call it before rendering the metrics (on a Prometheus scrape).
    #[cfg(feature = "metrics")]
    pub async fn record_metrics(&self) {
        if let Some(outbox) = &self.outbox {
            if let Ok(n) = outbox.backlog().await {
                metrics::gauge!("catga_outbox_backlog").set(n as f64);
            }
        }
        let leading = self.leading.names();
        for task in &self.tasks_named {
            let on = leading.iter().any(|l| l.as_str() == &**task);
            metrics::gauge!("catga_leader", "task" => task.to_string()).set(if on {
                1.0
            } else {
                0.0
            });
        }
        metrics::counter!("catga_retry_denied_total")
            .absolute(self.mediator.retry_budget().denied());
        // Saga coordinators are the leader tasks `catga.saga.<name>`.
        for saga in self
            .tasks_named
            .iter()
            .filter_map(|t| t.strip_prefix("catga.saga."))
        {
            if let Ok(n) = self.saga_store.count_unfinished(saga).await {
                metrics::gauge!("catga_sagas_unfinished", "saga" => saga.to_owned()).set(n as f64);
            }
            if let Ok(failed) = self.saga_store.failed(saga).await {
                metrics::gauge!("catga_sagas_failed", "saga" => saga.to_owned())
                    .set(failed.len() as f64);
            }
        }
    }

    /// Names of the leader-only tasks this peer runs right now (sagas'
    /// coordinators are named `catga.saga.<saga>`).
    pub fn leading(&self) -> Vec<String> {
        self.leading.names()
    }

    /// The outbox this peer relays, if any (for a backlog gauge).
    pub fn outbox_store(&self) -> Option<Arc<dyn OutboxStore>> {
        self.outbox.clone()
    }

    /// Stops gracefully: cancels leader tasks and releases their locks (another
    /// peer takes over at once), makes a last outbox relay pass, stops taking
    /// messages from the transport, lets those in flight finish, and
    /// disconnects. Local dispatch keeps working. Later calls do nothing.
    ///
    /// Bounded by the builder's [`shutdown_grace`](crate::CatgaBuilder::shutdown_grace)
    /// (30 s by default) whatever the state of the servers: what has not
    /// finished by then is left, and the error names it (a process should exit
    /// non-zero).
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(self.grace).await
    }

    /// [`Peer::shutdown`] within `grace` instead of the builder's.
    pub async fn shutdown_within(&self, grace: Duration) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = Instant::now() + grace;
        self.shutdown.cancel();
        self.tasks.close();
        let mut left = Vec::new();
        let tasks = &self.tasks;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            left.push(format!(
                "{} background tasks (leader tasks, sagas, the outbox relay's last pass)",
                tasks.len()
            ));
        }
        let drained = match self.mediator.transport() {
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
}

impl Deref for Peer {
    type Target = Mediator;

    fn deref(&self) -> &Mediator {
        &self.mediator
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            service = self.mediator.service(),
            "a peer was dropped without `shutdown().await`: its background tasks are cancelled \
             and its transport stops without waiting (leader locks run out instead of being \
             handed over)"
        );
        self.shutdown.cancel();
        if let (Some(transport), Ok(runtime)) = (
            self.mediator.transport().cloned(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(async move {
                let _ = transport.shutdown().await;
            });
        }
    }
}
