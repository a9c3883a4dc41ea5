//! Leader-only tasks: work that must run on exactly one peer at a time.
//!
//! A leader task is a named async function. Every peer that registers it competes
//! for a lock of that name in a [`LockStore`]; the holder runs the task, renews
//! its lease every `ttl / 3`, and the others retry. When renewal fails or comes
//! too late, the holder's task is cancelled ("lease lost") and the lock goes to
//! another peer within about one lease. A peer that shuts down cancels its task,
//! waits for it and releases the lock, so another peer takes over at once.
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
//! let mediator = Catga::builder()
//!     .leader_task("billing.scheduler", |ctx| async move {
//!         while !ctx.is_cancelled() {
//!             // ... do the leader-only work, passing ctx.fence() to stores ...
//!             ctx.sleep(Duration::from_secs(1)).await;
//!         }
//!         Ok(())
//!     })
//!     .build()?;
//! mediator.start().await?; // competes for the lock and runs the task when elected
//! mediator.shutdown().await?; // cancels the task and hands the lock over
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::mediator::Mediator;
use crate::store::{Lease, LockStore};

/// What a running leader task knows: its fencing token, its cancellation, and the
/// mediator to send messages with.
#[derive(Clone)]
pub struct LeaderContext {
    name: Arc<str>,
    fence: u64,
    cancel: CancellationToken,
    mediator: Mediator,
}

impl fmt::Debug for LeaderContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderContext")
            .field("name", &self.name)
            .field("fence", &self.fence)
            .field("cancelled", &self.cancel.is_cancelled())
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

    /// Cancelled when the lease is lost or the peer shuts down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the task should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
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

    /// The mediator of this peer.
    pub fn mediator(&self) -> &Mediator {
        &self.mediator
    }
}

type TaskFn = Arc<dyn Fn(LeaderContext) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A registered leader task: name, lease and body.
#[derive(Clone)]
pub struct LeaderTask {
    pub(crate) name: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) restart_delay: Duration,
    pub(crate) task: TaskFn,
}

impl fmt::Debug for LeaderTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderTask")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
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
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        // The lease runs from when the request left, not from when the answer came.
        let asked = Instant::now();
        match store.try_acquire(&task.name, task.ttl).await {
            Ok(Some(lease)) => {
                let term = lead(&task, &*store, lease, asked, mediator.clone(), &shutdown).await;
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
async fn lead(
    task: &LeaderTask,
    store: &dyn LockStore,
    lease: Lease,
    asked: Instant,
    mediator: Mediator,
    shutdown: &CancellationToken,
) -> Result<()> {
    tracing::info!(task = %task.name, fence = lease.fence, "elected leader");
    let _term = Term::begin(&mediator, &task.name);
    let cancel = shutdown.child_token();
    let ctx = LeaderContext {
        name: task.name.clone(),
        fence: lease.fence,
        cancel: cancel.clone(),
        mediator,
    };
    let mut body = tokio::spawn((task.task)(ctx));
    let mut valid_until = asked + task.ttl;
    let mut ticker = tokio::time::interval(task.renew_every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let outcome = loop {
        tokio::select! {
            joined = &mut body => {
                break match joined {
                    Ok(result) => result,
                    Err(e) => Err(Error::new(ErrorKind::Handler, format!("leader task `{}` panicked: {e}", task.name))),
                };
            }
            _ = ticker.tick() => {
                let asked = Instant::now();
                match store.renew(&task.name, &lease.token, task.ttl).await {
                    Ok(true) if Instant::now() < valid_until => valid_until = asked + task.ttl,
                    Ok(_) => {
                        cancel.cancel();
                        let _ = (&mut body).await;
                        break Err(lease_lost(&task.name, "another peer holds the lock now"));
                    }
                    Err(e) if Instant::now() >= valid_until => {
                        cancel.cancel();
                        let _ = (&mut body).await;
                        break Err(lease_lost(&task.name, &format!("renewal failed until the lease ran out: {e}")));
                    }
                    Err(e) => tracing::warn!(task = %task.name, error = %e, "lease renewal failed; retrying"),
                }
            }
        }
    };
    cancel.cancel();
    match store.release(&task.name, &lease.token).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(task = %task.name, error = %e, "could not release the lock; it expires by itself")
        }
    }
    outcome
}

/// Marks this peer as the leader of a task while alive.
struct Term {
    mediator: Mediator,
    name: Arc<str>,
}

impl Term {
    fn begin(mediator: &Mediator, name: &Arc<str>) -> Term {
        mediator.set_leading(name, true);
        Term {
            mediator: mediator.clone(),
            name: name.clone(),
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.mediator.set_leading(&self.name, false);
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
