//! Sagas: persisted, orchestrated business flows with compensation.
//!
//! A saga is a named list of steps over typed data. Each step sends a command
//! built from the data, may write its response back into the data, and may name
//! a compensating command. A step whose outcome is unknown (a timeout, a
//! transport error, "no responders") is asked again with the same message id
//! until a definite answer or its deadline. When a step fails (the handler said
//! no), the completed steps are compensated in reverse order; when it is given
//! up on with its outcome unknown, it is compensated too.
//!
//! ```text
//!            ┌────────┐ ok ┌────────┐ ok ┌────────┐ ok
//!  start ───▶│reserve │───▶│ charge │───▶│  ship  │───▶ Completed
//!            └────────┘    └────────┘    └────────┘
//!                              │ fails       │ fails
//!                              ▼             ▼
//!            ┌────────┐    ┌────────┐
//! Compensated◀│release │◀───│ refund │◀─── (reverse order, completed steps only)
//!            └────────┘    └────────┘
//!                 │ keeps failing after retries
//!                 ▼
//!               Failed (reason + step, for an operator)
//! ```
//!
//! The coordinator runs as a leader-only task (one peer at a time): after a
//! failover the new leader loads every unfinished saga and continues from its
//! persisted step. Each step's command carries a message id derived from (saga
//! id, step, do/undo), so a command re-sent after a crash is recognised by the
//! handler's idempotency and its effect happens once. Every save names the
//! version it read and the coordinator's fencing token, so a deposed
//! coordinator cannot write.
//!
//! ```
//! use std::time::Duration;
//! use catga_core::saga::{Saga, Step};
//! # use catga_core::{Message, Request};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Serialize, Deserialize)] struct Reserve { qty: u32 }
//! # impl Message for Reserve { const NAME: &'static str = "stock.Reserve"; }
//! # impl Request for Reserve { type Response = u64; }
//! # #[derive(Clone, Serialize, Deserialize)] struct Release { reservation: u64 }
//! # impl Message for Release { const NAME: &'static str = "stock.Release"; }
//! # impl Request for Release { type Response = (); }
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Order { qty: u32, reservation: Option<u64> }
//!
//! let fulfilment = Saga::<Order>::new("orders.fulfilment").step(
//!     Step::send("reserve", |o: &Order| Reserve { qty: o.qty })
//!         .record(|o, reservation| o.reservation = Some(reservation))
//!         .compensate(|o| Release { reservation: o.reservation.unwrap_or(0) })
//!         .timeout(Duration::from_secs(5))
//!         .retries(2),
//! );
//! # drop(fulfilment);
//! ```

mod admission;
mod coordinator;
mod handle;
mod memory;
mod starts;
mod state;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use coordinator::SagaRunner;
pub use coordinator::{SagaCompensated, SagaCompleted, SagaFailed};
pub use handle::SagaHandle;
pub use state::{
    MemorySagaStore, SagaEvent, SagaState, SagaStatus, SagaStore, conflict, resume_compensation,
};

use crate::dispatch::handle::Mediator;
use crate::error::Result;
use crate::message::Request;
use crate::metadata::Metadata;

/// Data a saga carries: persisted between steps.
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

type Apply<D> = Box<dyn FnOnce(&mut D) + Send>;
type Action<D> =
    Arc<dyn Fn(Mediator, D, Metadata) -> BoxFuture<'static, Result<Apply<D>>> + Send + Sync>;
type Undo<D> = Arc<dyn Fn(Mediator, D, Metadata) -> BoxFuture<'static, Result<()>> + Send + Sync>;
type When<D> = Arc<dyn Fn(&D) -> bool + Send + Sync>;
type Record<D, R> = Arc<dyn Fn(&mut D, R) + Send + Sync>;

/// One step of a saga, with its command type erased. Build it with
/// [`Step::send`], or [`Step::compensation_only`] for a step that only undoes.
pub struct Step<D> {
    pub(crate) name: Arc<str>,
    /// What the step does going forward; `None`: nothing (a step that only
    /// compensates).
    pub(crate) action: Option<Action<D>>,
    pub(crate) undo: Option<Undo<D>>,
    pub(crate) when: Option<When<D>>,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) deadline: Option<Duration>,
}

impl<D> Step<D> {
    /// How long the step may go without a definite answer: set, or one timeout
    /// per attempt that `retries` allows.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
            .unwrap_or_else(|| self.timeout.saturating_mul(self.retries.saturating_add(1)))
    }
}

impl<D> std::fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensated", &self.undo.is_some())
            .field("conditional", &self.when.is_some())
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("deadline", &self.deadline())
            .finish()
    }
}

/// A step under construction: sends `C`, built from the data.
pub struct SendStep<D, C: Request> {
    name: Arc<str>,
    make: Arc<dyn Fn(&D) -> C + Send + Sync>,
    record: Option<Record<D, C::Response>>,
    undo: Option<Undo<D>>,
    when: Option<When<D>>,
    timeout: Duration,
    retries: u32,
    deadline: Option<Duration>,
}

impl<D, C: Request> std::fmt::Debug for SendStep<D, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStep")
            .field("name", &self.name)
            .field("command", &C::NAME)
            .finish_non_exhaustive()
    }
}

impl<D> Step<D> {
    /// A step that sends the command `make` builds from the data. Defaults: a
    /// 30 s timeout per attempt, 2 retries while the outcome is unknown, a step
    /// deadline of one timeout per attempt.
    pub fn send<C: Request>(
        name: impl Into<Arc<str>>,
        make: impl Fn(&D) -> C + Send + Sync + 'static,
    ) -> SendStep<D, C> {
        SendStep {
            name: name.into(),
            make: Arc::new(make),
            record: None,
            undo: None,
            when: None,
            timeout: Duration::from_secs(30),
            retries: 2,
            deadline: None,
        }
    }
}

impl<D: SagaData> Step<D> {
    /// A step that does nothing going forward and, when the saga compensates,
    /// sends the command `make` builds from the data: it undoes what was done
    /// before the saga started (e.g. an order that the command starting the
    /// saga marked as being paid, to be rejected if the payment fails).
    ///
    /// Going forward it sends no message and makes no save of its own: it is
    /// marked completed with the step after it. Its compensation is retried
    /// like every other (see [`Saga::compensation_retries`]) and, like every
    /// compensation, must accept that there may be nothing to undo.
    pub fn compensation_only<K: Request>(
        name: impl Into<Arc<str>>,
        make: impl Fn(&D) -> K + Send + Sync + 'static,
    ) -> Step<D> {
        let undo: Undo<D> = Arc::new(move |mediator: Mediator, data: D, meta: Metadata| {
            let command = make(&data);
            Box::pin(async move { mediator.send_with(command, meta).await.map(drop) })
        });
        Step {
            name: name.into(),
            action: None,
            undo: Some(undo),
            when: None,
            timeout: Duration::from_secs(30),
            retries: 2,
            deadline: None,
        }
    }
}

impl<D: SagaData, C: Request> SendStep<D, C> {
    /// Writes the command's response into the data.
    pub fn record(mut self, f: impl Fn(&mut D, C::Response) + Send + Sync + 'static) -> Self {
        self.record = Some(Arc::new(f));
        self
    }

    /// The command that undoes this step, built from the data as it is when
    /// compensation runs.
    pub fn compensate<K: Request>(
        mut self,
        make: impl Fn(&D) -> K + Send + Sync + 'static,
    ) -> Self {
        self.undo = Some(Arc::new(
            move |mediator: Mediator, data: D, meta: Metadata| {
                let command = make(&data);
                Box::pin(async move { mediator.send_with(command, meta).await.map(drop) })
            },
        ));
        self
    }

    /// Runs the step only when `f` holds for the data; otherwise it is skipped
    /// (and not compensated).
    pub fn when(mut self, f: impl Fn(&D) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(f));
        self
    }

    /// Time one attempt may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts after the first whose outcome was unknown (a timeout, a
    /// transport error, "no responders", a retryable error), at least; each asks
    /// again with the same message id, so the handler's idempotency answers with
    /// the outcome of the attempt that ran.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// How long the step keeps asking while its outcome is unknown, from its
    /// first attempt (default: one [`timeout`](SendStep::timeout) per attempt
    /// that [`retries`](SendStep::retries) allows). When it gives up, the step is
    /// compensated with the completed ones, since it may have happened: its
    /// compensation must accept that there may be nothing to undo.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl<D: SagaData, C: Request> From<SendStep<D, C>> for Step<D> {
    fn from(s: SendStep<D, C>) -> Step<D> {
        let (make, record) = (s.make, s.record);
        Step {
            name: s.name,
            action: Some(Arc::new(
                move |mediator: Mediator, data: D, meta: Metadata| {
                    let command = make(&data);
                    let record = record.clone();
                    Box::pin(async move {
                        let response = mediator.send_with(command, meta).await?;
                        Ok(Box::new(move |d: &mut D| {
                            if let Some(record) = record {
                                record(d, response);
                            }
                        }) as Apply<D>)
                    })
                },
            )),
            undo: s.undo,
            when: s.when,
            timeout: s.timeout,
            retries: s.retries,
            deadline: s.deadline,
        }
    }
}

/// A saga definition: a name, typed data and ordered steps.
pub struct Saga<D> {
    pub(crate) name: Arc<str>,
    pub(crate) steps: Vec<Step<D>>,
    pub(crate) compensation_retries: u32,
    pub(crate) compensation_deadline: Duration,
    pub(crate) backoff: Duration,
    pub(crate) max_concurrent: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_backlog: Option<usize>,
}

impl<D> std::fmt::Debug for Saga<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl<D: SagaData> Saga<D> {
    /// An empty saga named `name` (unique in a deployment).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Saga {
            name: name.into(),
            steps: Vec::new(),
            compensation_retries: 5,
            compensation_deadline: Duration::from_secs(600),
            backoff: Duration::from_millis(100),
            max_concurrent: 64,
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(10),
            max_backlog: None,
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: impl Into<Step<D>>) -> Self {
        self.steps.push(step.into());
        self
    }

    /// Attempts of a compensation that its handler refuses (an error of its
    /// own) before the saga is marked failed (default 5), with jittered
    /// exponential backoff from `backoff` (default 100 ms).
    ///
    /// A compensation whose outcome is unknown (no responders, a timeout, a
    /// transport or store error) is not refused: it is asked again, with the
    /// same backoff capped at 10 s, for up to
    /// [`Saga::compensation_deadline`], so a service restarting or cut off
    /// for a while delays a refund instead of leaving it to an operator.
    pub fn compensation_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.compensation_retries = retries;
        self.backoff = backoff;
        self
    }

    /// How long a compensation whose outcome is unknown is asked again
    /// before the saga is marked failed for an operator (default 10
    /// minutes; see [`Saga::compensation_retries`]).
    pub fn compensation_deadline(mut self, deadline: Duration) -> Self {
        self.compensation_deadline = deadline;
        self
    }

    /// Sagas of this definition driven at once by the coordinator (default 64).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n.max(1);
        self
    }

    /// The most sagas of this definition unfinished at once (default: no
    /// bound). When the backlog is at the bound, [`SagaHandle::admit`]
    /// answers `overloaded` (code
    /// `catga.saga_backlog`, retryable): offered more than
    /// the coordinator drives, a service turns work away at once instead of
    /// finishing every saga late. Call [`SagaHandle::admit`] before the
    /// side effects that lead to starting one (`start` itself never
    /// refuses: a retried start must reach a saga its caller's effects need). Set it to what the coordinator finishes
    /// within the time callers wait (throughput × deadline). The count is
    /// refreshed from the store at most every 100 ms per peer.
    pub fn max_backlog(mut self, n: usize) -> Self {
        self.max_backlog = Some(n.max(1));
        self
    }

    /// How often the coordinator looks for sagas started elsewhere (default
    /// 100 ms; while it finds none, the interval doubles up to a second, and
    /// a start on the coordinator's own peer wakes it at once), and the
    /// coordinator's leader lease (default 10 s).
    pub fn polling(mut self, poll_interval: Duration, lease: Duration) -> Self {
        self.poll_interval = poll_interval;
        self.lease = lease;
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
