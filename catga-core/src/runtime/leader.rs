//! Leader-only tasks: work that must run on exactly one peer at a time.
//!
//! A leader task is a named async function. Every peer that registers it competes
//! for a lock of that name in a [`LockStore`]; the holder runs the task, renews
//! its lease every `ttl / 3`, and the others retry. The holder keeps its own
//! clock too: its term ends at the last confirmed lease end minus a safety
//! margin (a tenth of the lease by default), whatever a renewal still in flight
//! does, so a store that hangs cannot leave two leaders running. When the term
//! ends that way, or a renewal finds the lock taken, the task is cancelled and
//! stopped at once ("lease lost") and the lock goes to another peer within about
//! one lease. A peer that shuts down cancels its task, waits for it and
//! releases the lock, so another peer takes over at once.
//!
//! What a leader sends through its [`LeaderContext`] carries the term's fence
//! (header `Catga-Fence`); a peer receiving it refuses it when a newer term has
//! begun, so a leader paused past its lease (a stopped process) cannot act on
//! another peer once it wakes up.
//!
//! A leader task is meant to live as long as the service (a scheduler, a saga
//! coordinator). If it returns, or fails, it is started again after a short delay
//! on whichever peer then holds the lock.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
//! use std::time::Duration;
//! use catga_core::Catga;
//!
//! let peer = Catga::builder()
//!     .leader_task("billing.scheduler", |ctx| async move {
//!         while !ctx.is_cancelled() {
//!             // ... do the leader-only work, passing ctx.fence() to stores ...
//!             ctx.sleep(Duration::from_secs(1)).await;
//!         }
//!         Ok(())
//!     })
//!     .start() // competes for the lock and runs the task when elected
//!     .await?;
//! peer.shutdown().await?; // cancels the task and hands the lock over
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch::handle::{LiveTerm, Mediator};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Request};
use crate::metadata::{Fence, Metadata};
use crate::store::{Lease, LockStore};

/// What a running leader task knows: its fencing token, its cancellation, and the
/// mediator to send messages with.
///
/// Send through [`LeaderContext::send`] and [`LeaderContext::publish`]: they
/// refuse to send once the term is over by this peer's own clock, and stamp
/// what they send with the term's [`Fence`] (header `Catga-Fence`), which the
/// receiving peer checks against the lock store before it runs a handler.
#[derive(Clone)]
pub struct LeaderContext {
    name: Arc<str>,
    fence: u64,
    cancel: CancellationToken,
    term: Arc<TermClock>,
    mediator: Mediator,
}

impl fmt::Debug for LeaderContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderContext")
            .field("name", &self.name)
            .field("fence", &self.fence)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl LeaderContext {
    /// Name of the task (and of its lock).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fencing token of this term: greater than that of every earlier leader.
    /// Pass it to stores so writes from a deposed leader can be rejected.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// This term's fence as it travels with messages.
    pub fn term_fence(&self) -> Fence {
        Fence {
            name: self.name.to_string(),
            token: self.fence,
        }
    }

    /// Cancelled when the lease is lost or the peer shuts down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the task should stop now: it was cancelled, or the term is over
    /// by this peer's clock (a lease ends at its last confirmed renewal plus the
    /// lease, minus a safety margin, whatever a renewal still in flight says).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || !self.term.holds()
    }

    /// Completes when the task should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Sleeps for `duration`, returning early when cancelled.
    pub async fn sleep(&self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.cancel.cancelled() => {}
        }
    }

    /// The mediator of this peer. Messages sent through it directly carry no
    /// fence; prefer [`LeaderContext::send`] and [`LeaderContext::publish`].
    pub fn mediator(&self) -> &Mediator {
        &self.mediator
    }

    /// Metadata for a message of this term: `meta` with the term's fence, or an
    /// error when the term is over.
    pub fn stamp(&self, meta: Metadata) -> Result<Metadata> {
        if self.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Cancelled,
                format!(
                    "the term of leader task `{}` (fence {}) is over; nothing more is sent in it",
                    self.name, self.fence
                ),
            ));
        }
        Ok(meta.with_fence(&self.term_fence()))
    }

    /// Sends a request as this term's leader (see [`LeaderContext::stamp`]).
    pub async fn send<R: Request>(&self, request: R) -> Result<R::Response> {
        self.send_with(request, Metadata::new()).await
    }

    /// Like [`LeaderContext::send`] with per-call metadata.
    pub async fn send_with<R: Request>(&self, request: R, meta: Metadata) -> Result<R::Response> {
        let meta = self.stamp(meta)?;
        self.mediator.send_with(request, meta).await
    }

    /// Publishes an event as this term's leader (see [`LeaderContext::stamp`]).
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        let meta = self.stamp(Metadata::new())?;
        self.mediator.publish_with(event, meta).await
    }
}

/// When a term ends by this peer's clock: the last confirmed lease end minus a
/// safety margin (for clock rate differences between this peer and the store).
#[derive(Debug)]
struct TermClock {
    base: Instant,
    /// Nanoseconds after `base` at which the term ends.
    ends_ns: AtomicU64,
}

impl TermClock {
    fn new(ends: Instant) -> TermClock {
        let base = Instant::now();
        let clock = TermClock {
            base,
            ends_ns: AtomicU64::new(0),
        };
        clock.set(ends);
        clock
    }

    fn set(&self, ends: Instant) {
        let ns = ends.saturating_duration_since(self.base).as_nanos();
        self.ends_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn ends(&self) -> Instant {
        self.base + Duration::from_nanos(self.ends_ns.load(Ordering::Acquire))
    }

    fn holds(&self) -> bool {
        Instant::now() < self.ends()
    }
}

/// A term as the mediator sees it: live until cancelled or over by the clock.
struct LiveTermOf {
    cancel: CancellationToken,
    clock: Arc<TermClock>,
}

impl LiveTerm for LiveTermOf {
    fn live(&self) -> bool {
        !self.cancel.is_cancelled() && self.clock.holds()
    }
}

type TaskFn = Arc<dyn Fn(LeaderContext) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A registered leader task: name, lease and body.
#[derive(Clone)]
pub struct LeaderTask {
    pub(crate) name: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) margin: Option<Duration>,
    pub(crate) restart_delay: Duration,
    pub(crate) task: TaskFn,
}

impl fmt::Debug for LeaderTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderTask")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("margin", &self.safety_margin())
            .finish_non_exhaustive()
    }
}

impl LeaderTask {
    /// A task named `name` with a 10 s lease.
    pub fn new<F, Fut>(name: impl Into<Arc<str>>, task: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        LeaderTask {
            name: name.into(),
            ttl: Duration::from_secs(10),
            margin: None,
            restart_delay: Duration::from_millis(500),
            task: Arc::new(move |ctx| Box::pin(task(ctx))),
        }
    }

    /// Lease length: a dead leader is replaced within about this long.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How long before its lease ends (by its own clock) a leader stops:
    /// allowance for the store's clock running faster than this peer's and for
    /// stopping what the task does. Default a tenth of the lease.
    #[must_use]
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    fn safety_margin(&self) -> Duration {
        self.margin.unwrap_or(self.ttl / 10).min(self.ttl / 2)
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How often a follower asks for the lock: often enough that a released lock
    /// is taken over well within a second.
    fn poll_every(&self) -> Duration {
        self.renew_every().min(Duration::from_millis(250))
    }
}

/// Competes for the lock of `task` until `shutdown`, running the task whenever
/// this peer holds it.
pub(crate) async fn run(
    task: LeaderTask,
    store: Arc<dyn LockStore>,
    mediator: Mediator,
    leading: Leading,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        // The lease runs from when the request left, not from when the answer came.
        let asked = Instant::now();
        match store.try_acquire(&task.name, task.ttl).await {
            Ok(Some(lease)) => {
                let term = lead(
                    &task,
                    &*store,
                    lease,
                    asked,
                    mediator.clone(),
                    &leading,
                    &shutdown,
                )
                .await;
                if let Err(e) = term {
                    tracing::warn!(task = %task.name, error = %e, "leader term ended");
                }
                if !shutdown.is_cancelled() {
                    pause(&shutdown, task.restart_delay).await;
                }
            }
            Ok(None) => pause(&shutdown, jittered(task.poll_every())).await,
            Err(e) => {
                tracing::warn!(task = %task.name, error = %e, "could not reach the lock store");
                pause(&shutdown, jittered(task.renew_every())).await;
            }
        }
    }
}

/// One term as leader: run the task, renew the lease, stop on loss or shutdown.
///
/// The term ends by this peer's clock at the last confirmed lease end minus the
/// safety margin, whatever a renewal in flight does: renewals run beside the
/// timer, so a store that hangs cannot keep a deposed leader running.
async fn lead(
    task: &LeaderTask,
    store: &dyn LockStore,
    lease: Lease,
    asked: Instant,
    mediator: Mediator,
    leading: &Leading,
    shutdown: &CancellationToken,
) -> Result<()> {
    let margin = task.safety_margin();
    let clock = Arc::new(TermClock::new(asked + task.ttl - margin));
    if !clock.holds() {
        // The store's answer came after the term it granted had ended by
        // this peer's clock (a slow store): another peer may lead already.
        if let Err(e) = store.release(&task.name, &lease.token).await {
            tracing::debug!(task = %task.name, error = %e, "could not release a lock elected too late");
        }
        return Err(Error::new(
            ErrorKind::Store,
            format!(
                "elected leader of `{}` too late: the lock store answered after the term had ended",
                task.name
            ),
        ));
    }
    tracing::info!(task = %task.name, fence = lease.fence, "elected leader");
    let term = Term::begin(leading, &task.name);
    let cancel = shutdown.child_token();
    // Messages this term sends to handlers on this peer skip the fence
    // lookup while the term is live (see `Mediator::holds_term`).
    mediator.hold_term(
        task.name.clone(),
        lease.fence,
        Arc::new(LiveTermOf {
            cancel: cancel.clone(),
            clock: clock.clone(),
        }),
    );
    let registry = mediator.clone();
    let ctx = LeaderContext {
        name: task.name.clone(),
        fence: lease.fence,
        cancel: cancel.clone(),
        term: clock.clone(),
        mediator,
    };
    let mut body = tokio::spawn((task.task)(ctx));
    let mut next_renewal = asked + task.renew_every();
    let mut renewal: Option<(Instant, BoxFuture<'_, Result<bool>>)> = None;
    // On shutdown the task gets one lease to finish, then it is stopped.
    let mut grace_ends: Option<Instant> = None;
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled(), if grace_ends.is_none() => {
                grace_ends = Some(Instant::now() + task.ttl);
            }
            () = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now)), if grace_ends.is_some() => {
                tracing::warn!(task = %task.name, "leader task did not stop within a lease of shutdown; stopped");
                body.abort();
                let _ = (&mut body).await;
                break Ok(());
            }
            joined = &mut body => {
                break match joined {
                    Ok(result) => result,
                    Err(e) => Err(Error::new(ErrorKind::Handler, format!("leader task `{}` panicked: {e}", task.name))),
                };
            }
            () = tokio::time::sleep_until(clock.ends()) => {
                break Err(depose(&task.name, &cancel, &mut body, "the lease ran out before a renewal was confirmed").await);
            }
            () = tokio::time::sleep_until(next_renewal), if renewal.is_none() => {
                renewal = Some((Instant::now(), store.renew(&task.name, &lease.token, task.ttl)));
            }
            renewed = async { renewal.as_mut().map(|(_, r)| r) .expect("guarded by the branch condition").await }, if renewal.is_some() => {
                let asked = renewal.take().map_or_else(Instant::now, |(at, _)| at);
                match renewed {
                    Ok(true) if clock.holds() => {
                        clock.set(asked + task.ttl - margin);
                        // From when it was asked, like the lease: a slow
                        // answer does not push the next renewal past the
                        // term's end.
                        next_renewal = asked + task.renew_every();
                    }
                    Ok(_) => {
                        break Err(depose(&task.name, &cancel, &mut body, "another peer holds the lock now").await);
                    }
                    Err(e) => {
                        tracing::warn!(task = %task.name, error = %e, "lease renewal failed; retrying");
                        next_renewal = Instant::now() + task.renew_every() / 4;
                    }
                }
            }
        }
    };
    cancel.cancel();
    registry.end_term(&task.name, lease.fence);
    // No longer leading, whatever the release below takes.
    drop(term);
    drop(renewal);
    match store.release(&task.name, &lease.token).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(task = %task.name, error = %e, "could not release the lock; it expires by itself")
        }
    }
    outcome
}

/// Ends a term that lost its lease: cancels the task and stops it at once (it
/// is not waited for: another peer may lead in a moment).
async fn depose(
    name: &str,
    cancel: &CancellationToken,
    body: &mut tokio::task::JoinHandle<Result<()>>,
    why: &str,
) -> Error {
    cancel.cancel();
    body.abort();
    let _ = body.await;
    lease_lost(name, why)
}

/// The names of the leader tasks a peer runs right now.
#[derive(Clone, Default, Debug)]
pub(crate) struct Leading(Arc<std::sync::Mutex<std::collections::BTreeSet<Arc<str>>>>);

impl Leading {
    fn set(&self, name: &Arc<str>, leading: bool) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if leading {
            set.insert(name.clone());
        } else {
            set.remove(name);
        }
    }

    /// The names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().map(|n| n.to_string()).collect()
    }
}

/// Marks this peer as the leader of a task while alive.
struct Term {
    leading: Leading,
    name: Arc<str>,
}

impl Term {
    fn begin(leading: &Leading, name: &Arc<str>) -> Term {
        leading.set(name, true);
        Term {
            leading: leading.clone(),
            name: name.clone(),
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.leading.set(&self.name, false);
    }
}

fn lease_lost(name: &str, why: &str) -> Error {
    tracing::warn!(task = name, why, "lease lost; leader task cancelled");
    Error::new(
        ErrorKind::Cancelled,
        format!("leader task `{name}` lost its lease ({why}); it was cancelled"),
    )
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}
