//! The saga coordinator: a leader-only task that drives every unfinished saga.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::handle::SagaHandle;
use super::memory::{Driven, Resting};
use super::starts::{MAX_HANDED, Starts};
use super::{Saga, SagaData, SagaState, SagaStatus, SagaStore};
use crate::backoff::Backoff;
use crate::codec::Format;
use crate::dispatch::handle::TypeMap;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Message};
use crate::metadata::Metadata;
use crate::runtime::leader::{LeaderContext, LeaderTask};

/// Published when a saga ran every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCompleted {
    /// Saga definition name.
    pub saga: String,
    /// Saga instance id.
    pub id: Uuid,
}

/// Published when a saga failed and every completed step was undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCompensated {
    /// Saga definition name.
    pub saga: String,
    /// Saga instance id.
    pub id: Uuid,
    /// The step that failed.
    pub step: String,
    /// Why it failed.
    pub reason: String,
}

/// Published when a compensation kept failing: the saga needs an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaFailed {
    /// Saga definition name.
    pub saga: String,
    /// Saga instance id.
    pub id: Uuid,
    /// The step whose compensation failed.
    pub step: String,
    /// Why.
    pub reason: String,
}

impl Message for SagaCompleted {
    const NAME: &'static str = "catga.SagaCompleted";
}
impl Event for SagaCompleted {}
impl Message for SagaCompensated {
    const NAME: &'static str = "catga.SagaCompensated";
}
impl Event for SagaCompensated {}
impl Message for SagaFailed {
    const NAME: &'static str = "catga.SagaFailed";
}
impl Event for SagaFailed {}

/// The resources of a mediator being built.
type Resources = TypeMap<Arc<dyn std::any::Any + Send + Sync>>;

/// A saga definition with its data type erased, as the builder keeps it.
pub(crate) trait SagaRunner: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn leader_task(&self, store: Arc<dyn SagaStore>, starts: Arc<Starts>) -> LeaderTask;
    /// Adds the saga's [`SagaHandle`] over `store` to `resources`.
    fn bind(&self, store: Arc<dyn SagaStore>, starts: Arc<Starts>, resources: &mut Resources);
}

impl<D: SagaData> SagaRunner for Arc<Saga<D>> {
    fn name(&self) -> &str {
        &self.name
    }

    fn bind(&self, store: Arc<dyn SagaStore>, starts: Arc<Starts>, resources: &mut Resources) {
        SagaHandle::bind(self.clone(), store, starts, resources);
    }

    fn leader_task(&self, store: Arc<dyn SagaStore>, starts: Arc<Starts>) -> LeaderTask {
        let saga = self.clone();
        LeaderTask::new(format!("catga.saga.{}", self.name), move |ctx| {
            coordinate(saga.clone(), store.clone(), starts.clone(), ctx)
        })
        .ttl(self.lease)
    }
}

/// The message id of step `step`'s command (`do`) or compensation (`undo`):
/// the same after every crash and failover, so handlers' idempotency sees a
/// re-sent command as the same message.
fn step_id(saga: Uuid, step: usize, kind: &str) -> Uuid {
    Uuid::new_v5(&saga, format!("{step}:{kind}").as_bytes())
}

async fn coordinate<D: SagaData>(
    saga: Arc<Saga<D>>,
    store: Arc<dyn SagaStore>,
    starts: Arc<Starts>,
    ctx: LeaderContext,
) -> Result<()> {
    let mut active: HashSet<Uuid> = HashSet::new();
    // Sagas the last listing found, still to drive.
    let mut pending: VecDeque<Uuid> = VecDeque::new();
    // Sagas started on this peer, with the state their start stored: driven
    // without loading it (see `Starts`). A queue of their own, so that starts
    // here, however many, never keep the listing (sagas started elsewhere,
    // sagas to resume) from running; the two take turns for drivers.
    let _leading = starts.lead();
    let mut handed: HashMap<Uuid, SagaState> = HashMap::new();
    let mut handed_order: VecDeque<Uuid> = VecDeque::new();
    let mut handed_turn = false;
    let mut resting = Resting::default();
    let mut driven = Driven::default();
    // Each saga is driven on a task of its own, so a busy coordinator uses
    // every core; dropping the set (deposed, cancelled) aborts them, and the
    // next leader resumes them from their state.
    let mut tasks = tokio::task::JoinSet::new();
    let mut driving: HashMap<tokio::task::Id, Uuid> = HashMap::new();
    // Listing the unfinished sagas costs one round trip per listing and grows
    // with the backlog: list at most once per poll interval (or when woken
    // with nothing handed over), and feed the drivers from what the last
    // listing returned.
    let mut next_listing = tokio::time::Instant::now();
    let mut woken = Box::pin(starts.notified());
    // With nothing to do, the listing interval doubles up to a second, so an
    // idle coordinator leaves its store alone; a start on this peer wakes it,
    // and any saga found brings the interval back to `poll_interval`.
    let idle_max = saga.poll_interval.max(Duration::from_secs(1));
    let mut interval = saga.poll_interval;
    while !ctx.is_cancelled() {
        for state in starts.take() {
            // Beyond the bound, the state is dropped: the listing finds the
            // saga and its driver loads it. One a listing found and drove
            // already (its start slow to hand it over) is not driven again
            // from the state its start stored.
            if driven.contains(&state.id) {
                // The listing finds it (again) if it is unfinished.
                next_listing = tokio::time::Instant::now();
                continue;
            }
            let new = !active.contains(&state.id) && !handed.contains_key(&state.id);
            if new && handed.len() < MAX_HANDED {
                handed_order.push_back(state.id);
                handed.insert(state.id, state);
            }
        }
        if pending.is_empty() && tokio::time::Instant::now() >= next_listing {
            woken = Box::pin(starts.notified()); // armed before the query
            match store.unfinished(&saga.name).await {
                Ok(ids) => {
                    if !resting.is_empty() {
                        resting.keep_listed(&ids.iter().copied().collect());
                    }
                    pending.extend(ids.into_iter().filter(|id| {
                        !active.contains(id) && !handed.contains_key(id) && !resting.resting(id)
                    }));
                }
                Err(e) => {
                    tracing::warn!(saga = %saga.name, error = %e, "cannot list unfinished sagas")
                }
            }
            let idle = pending.is_empty()
                && active.is_empty()
                && handed_order.is_empty()
                && resting.is_empty();
            interval = if idle {
                (interval * 2).min(idle_max)
            } else {
                saga.poll_interval
            };
            next_listing = tokio::time::Instant::now() + interval;
        }
        while active.len() < saga.max_concurrent {
            handed_turn = !handed_turn;
            let next = if handed_turn {
                handed_order.pop_front().or_else(|| pending.pop_front())
            } else {
                pending.pop_front().or_else(|| handed_order.pop_front())
            };
            let Some(id) = next else { break };
            if resting.resting(&id) {
                // A later listing finds it once its rest is over.
                handed.remove(&id);
                continue;
            }
            if active.insert(id) {
                let driver = drive(
                    saga.clone(),
                    store.clone(),
                    ctx.clone(),
                    id,
                    handed.remove(&id),
                );
                let task = tasks.spawn(driver.in_current_span());
                driving.insert(task.id(), id);
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (task, paused) = match done {
                    Ok((task, paused)) => (task, paused),
                    // A driver panicked: its saga is retried after a rest.
                    Err(e) => {
                        tracing::error!(saga = %saga.name, error = %e, "a saga driver failed");
                        (e.id(), true)
                    }
                };
                if let Some(id) = driving.remove(&task) {
                    active.remove(&id);
                    // Driven, whatever came of it: a state its start hands
                    // over from now on is older than the store's.
                    driven.insert(id);
                    if paused {
                        resting.paused(id);
                    } else {
                        resting.went_on(id);
                    }
                }
            }
            () = &mut woken => {
                woken = Box::pin(starts.notified());
                interval = saga.poll_interval;
                // A start here hands its saga over (taken at the top of the
                // loop); a wake with nothing handed lists at once.
                if !starts.has_handed() {
                    next_listing = tokio::time::Instant::now();
                }
            }
            () = tokio::time::sleep_until(next_listing), if pending.is_empty() => {}
            () = ctx.cancelled() => {}
        }
    }
    // Sagas in flight stop here; the next leader resumes them from their state.
    Ok(())
}

/// Drives saga `id` from `handed` (the state its start on this peer stored)
/// or from its stored state. `true` when it stopped on an error (the saga
/// rests before its next try).
async fn drive<D: SagaData>(
    saga: Arc<Saga<D>>,
    store: Arc<dyn SagaStore>,
    leader: LeaderContext,
    id: Uuid,
    handed: Option<SagaState>,
) -> bool {
    let run = Driver {
        saga: &saga,
        store: &*store,
        leader: &leader,
    };
    match run.saga(id, handed).await {
        Ok(()) => false,
        Err(e) if e.kind() == ErrorKind::Conflict || leader.is_cancelled() => {
            tracing::info!(saga = %saga.name, %id, error = %e, "saga taken over");
            false
        }
        Err(e) => {
            tracing::warn!(saga = %saga.name, %id, error = %e, "saga paused; it resumes after a rest");
            true
        }
    }
}

struct Driver<'a, D> {
    saga: &'a Saga<D>,
    store: &'a dyn SagaStore,
    leader: &'a LeaderContext,
}

/// Whether asking again may bring a definite answer: a timeout, a transport
/// error, "no responders" or "cancelled" (a rolling restart, a NATS
/// failover), a lost idempotency claim or any other retryable error. The
/// command may have been applied meanwhile; the same message id makes a
/// repeat take effect once.
fn worth_asking_again(e: &Error) -> bool {
    // `Cancelled`: the peer that had it is shutting down (a rolling restart).
    // `catga.claim_lost`: the handler outlived its claim (its peer paused);
    // another attempt may have stored an outcome, which a repeat gets.
    e.is_retryable()
        || matches!(e.kind(), ErrorKind::NoHandler | ErrorKind::Cancelled)
        || e.code() == Some("catga.claim_lost")
}

/// Whether a failure is the handler's own "no": an error it returned (or a
/// stored one replayed), a validation failure, a business conflict. Only
/// then did its effect not happen. Anything else (a panic, a reply that
/// could not be carried or read, a reused message id, a corrupt stored
/// outcome, a timeout) leaves the outcome unknown, however final it is: a
/// step that ends so is compensated with the others.
fn refused(e: &Error) -> bool {
    let framework = e.code().is_some_and(|c| c.starts_with("catga."));
    match e.kind() {
        ErrorKind::Validation => true,
        ErrorKind::Handler | ErrorKind::Conflict => !framework,
        _ => false,
    }
}

impl<D: SagaData> Driver<'_, D> {
    async fn saga(&self, id: Uuid, handed: Option<SagaState>) -> Result<()> {
        let state = match handed {
            Some(state) => Some(state),
            None => self.store.load(id).await?,
        };
        let Some(mut state) = state else {
            // Listed but never stored (its starter died in between; a retry of
            // the start stores it under the same id): nothing to drive.
            tracing::warn!(saga = %self.saga.name, %id, "listed saga has no state; dropping it from the list");
            return self.store.forget(&self.saga.name, id).await;
        };
        if state.status.is_finished() {
            // Listed although finished (a store whose save and list update
            // are not one step, and whose writer died in between).
            return self.store.forget(&state.saga, state.id).await;
        }
        if state.fence > self.leader.fence() {
            // Written in a later term than this one: a newer coordinator
            // leads (this one is deposed and its lease will say so), or the
            // lock's fence counter went backwards (its key evicted, the lock
            // Redis replaced). Either way this one must not drive it: every
            // save would be refused, after its step was sent again.
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "saga {} was saved with fence {} above this coordinator's {}: a newer \
                     coordinator leads, or the lock's fence counter went backwards (its key \
                     evicted or its Redis replaced: restore the counter above {})",
                    state.id,
                    state.fence,
                    self.leader.fence(),
                    state.fence
                ),
            )
            .with_code("catga.fence_ahead"));
        }
        while !self.leader.is_cancelled() {
            match state.status {
                SagaStatus::Running => self.forward(&mut state).await?,
                SagaStatus::Compensating => self.backward(&mut state).await?,
                // The save that finished it took it off the list, in the
                // same step (see `SagaStore::save`).
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Records the current step as completed and moves past it; `true` when
    /// it was the last step.
    fn step_completed(&self, state: &mut SagaState, name: &str) -> bool {
        state.completed.push(state.step);
        state.step += 1;
        state.record(name, "completed", "");
        state.step as usize == self.saga.steps.len()
    }

    /// Marks the saga completed, saves it and announces it.
    async fn complete(&self, state: &mut SagaState) -> Result<()> {
        state.status = SagaStatus::Completed;
        state.record("", "finished", "completed");
        self.save_final(state).await?;
        let event = SagaCompleted {
            saga: state.saga.clone(),
            id: state.id,
        };
        self.announce(event).await;
        Ok(())
    }

    /// Saves with the next version and this term's fence; nothing once the term
    /// is over (the store would refuse it too once the next leader has written).
    async fn save(&self, state: &mut SagaState) -> Result<()> {
        if self.leader.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Cancelled,
                "the coordinator's term is over; the next leader carries on",
            ));
        }
        state.version += 1;
        state.fence = self.leader.fence();
        self.store.save(state).await
    }

    /// Saves a state that finishes the saga, before its end is announced.
    /// A save that reports an error may have been applied all the same (its
    /// reply lost after Redis wrote it, or a client that sent it again and
    /// met its own write as a conflict): the stored state is read back, and
    /// if it is this very save (same version, status and fence), the saga is
    /// finished and its end is announced; otherwise the error stands. Without
    /// this, a finished saga, off the unfinished list, was never announced.
    async fn save_final(&self, state: &mut SagaState) -> Result<()> {
        let Err(e) = self.save(state).await else {
            return Ok(());
        };
        match self.store.load(state.id).await {
            Ok(Some(stored))
                if stored.version == state.version
                    && stored.status == state.status
                    && stored.fence == state.fence =>
            {
                tracing::info!(saga = %state.saga, id = %state.id, error = %e, "the final save reported an error but was stored");
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Waits `wait`; `false` when the coordinator is stopping.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => !self.leader.is_cancelled(),
            () = self.leader.cancelled() => false,
        }
    }

    /// The metadata of step `step`'s command or compensation: a message id that
    /// is the same on every attempt and after every failover, the saga as the
    /// correlation id, the attempt's timeout and the term's fence.
    fn meta(
        &self,
        state: &SagaState,
        step: usize,
        kind: &str,
        timeout: Duration,
    ) -> Result<Metadata> {
        self.leader.stamp(
            Metadata::new()
                .with_message_id(step_id(state.id, step, kind))
                .with_correlation_id(state.id)
                .with_timeout(timeout),
        )
    }

    /// Runs the next step (or finishes the saga) and saves the outcome.
    ///
    /// An attempt whose outcome is unknown and worth asking again (a timeout,
    /// no responders, a retryable error) is asked again with the same message
    /// id (the handler's idempotency answers with the first attempt's outcome)
    /// until a definite answer, at least `retries` times and as long as the
    /// step's deadline allows. The handler's own "no" fails the step; a step
    /// given up on while its outcome is unknown, or ended by an error that
    /// is not the handler's "no" (a panic, an unreadable reply), is
    /// compensated with the others: its effect may exist.
    async fn forward(&self, state: &mut SagaState) -> Result<()> {
        let i = state.step as usize;
        let Some(step) = self.saga.steps.get(i) else {
            return self.complete(state).await;
        };
        let mut data: D = state.data()?;
        if step.when.as_ref().is_some_and(|when| !when(&data)) {
            state.step += 1;
            state.record(&step.name, "skipped", "");
            return self.save(state).await;
        }
        let Some(action) = &step.action else {
            // Nothing to do going forward: completed now, saved with the
            // next step's outcome (a crash before that does it again, which
            // is nothing).
            if self.step_completed(state, &step.name) {
                return self.complete(state).await;
            }
            return Ok(());
        };
        let give_up = Instant::now() + step.deadline();
        let mut backoff = Backoff::new(self.saga.backoff, Duration::from_secs(10));
        let mut attempt = 0;
        let budget = self.leader.mediator().retry_budget().clone();
        budget.deposit();
        loop {
            let meta = self.meta(state, i, "do", step.timeout)?;
            let result = action(self.leader.mediator().clone(), data.clone(), meta).await;
            if self.leader.is_cancelled() {
                // Whatever the answer, a deposed coordinator records nothing.
                return Ok(());
            }
            let e = match result {
                Ok(apply) => {
                    apply(&mut data);
                    state.data = Format::MsgPack.encode(&data)?;
                    if self.step_completed(state, &step.name) {
                        // The last step: its outcome and the saga's end in
                        // one save.
                        return self.complete(state).await;
                    }
                    return self.save(state).await;
                }
                Err(e) if e.code() == Some("catga.stale_fence") => return Err(e),
                Err(e) => e,
            };
            attempt += 1;
            let mut wait = backoff.next_delay();
            let more = attempt <= step.retries || Instant::now() + wait < give_up;
            if worth_asking_again(&e) && more {
                if !budget.withdraw() {
                    // The peer is retrying too much: this step must still reach
                    // an answer, so it waits longer (jittered, within its
                    // deadline) rather than give up.
                    let longest = backoff.cap(u32::MAX).mul_f64(0.5 + fastrand::f64() / 2.0);
                    let left = give_up.saturating_duration_since(Instant::now());
                    wait = wait.max(longest.min(left));
                }
                tracing::debug!(saga = %state.saga, id = %state.id, step = %step.name, attempt, error = %e, "step outcome unknown; asking again");
                if !self.pause(wait).await {
                    return Ok(());
                }
                continue;
            }
            state.status = SagaStatus::Compensating;
            state.error = Some(e.to_string());
            state.failed_step = Some(step.name.to_string());
            if refused(&e) && !worth_asking_again(&e) {
                state.record(&step.name, "failed", e.to_string());
            } else {
                // It may have happened: undo it with the steps before it.
                state.completed.push(state.step);
                state.record(
                    &step.name,
                    "gave_up",
                    format!("no definite answer after {attempt} attempts: {e}"),
                );
            }
            return self.save(state).await;
        }
    }

    /// Undoes the last completed step (or finishes the compensation) and saves.
    async fn backward(&self, state: &mut SagaState) -> Result<()> {
        let Some(&last) = state.completed.last() else {
            state.status = SagaStatus::Compensated;
            state.record("", "finished", "compensated");
            self.save_final(state).await?;
            let event = SagaCompensated {
                saga: state.saga.clone(),
                id: state.id,
                step: state.failed_step.clone().unwrap_or_default(),
                reason: state.error.clone().unwrap_or_default(),
            };
            self.announce(event).await;
            return Ok(());
        };
        let i = last as usize;
        let Some(step) = self.saga.steps.get(i) else {
            // The definition lost steps since this saga started.
            state.completed.pop();
            state.record(
                "",
                "compensation_skipped",
                format!("no step {i} in this definition"),
            );
            return self.save(state).await;
        };
        if let Some(undo) = &step.undo {
            let data: D = state.data()?;
            let attempts = self.saga.compensation_retries.max(1);
            let mut backoff = Backoff::new(self.saga.backoff, Duration::from_secs(10));
            let mut attempt = 1;
            let give_up = Instant::now() + self.saga.compensation_deadline;
            loop {
                let meta = self.meta(state, i, "undo", step.timeout)?;
                let result = undo(self.leader.mediator().clone(), data.clone(), meta).await;
                if self.leader.is_cancelled() {
                    return Ok(());
                }
                match result {
                    Ok(()) => break,
                    Err(e) if e.code() == Some("catga.stale_fence") => return Err(e),
                    // Worth asking again (no responders, a timeout, the
                    // transport or a store away, a "try later"): that does
                    // not spend the attempts, which are for refusals; asked
                    // again until the compensation deadline.
                    Err(e) if worth_asking_again(&e) && Instant::now() < give_up => {
                        tracing::warn!(saga = %state.saga, id = %state.id, step = %step.name, error = %e, "compensation outcome unknown; asking again");
                        if !self.pause(backoff.next_delay()).await {
                            return Ok(());
                        }
                    }
                    Err(e) if attempt < attempts => {
                        tracing::warn!(saga = %state.saga, id = %state.id, step = %step.name, attempt, error = %e, "compensation retrying");
                        if !self.pause(backoff.next_delay()).await {
                            return Ok(());
                        }
                        attempt += 1;
                    }
                    Err(e) => {
                        let reason = format!(
                            "compensation of `{}` failed after {attempts} attempts: {e}",
                            step.name
                        );
                        state.status = SagaStatus::Failed;
                        state.failed_step = Some(step.name.to_string());
                        state.error = Some(reason.clone());
                        state.record(&step.name, "compensation_failed", reason.clone());
                        self.save_final(state).await?;
                        let event = SagaFailed {
                            saga: state.saga.clone(),
                            id: state.id,
                            step: step.name.to_string(),
                            reason,
                        };
                        self.announce(event).await;
                        return Ok(());
                    }
                }
            }
        }
        state.completed.pop();
        state.record(&step.name, "compensated", "");
        self.save(state).await
    }

    async fn announce<E: Event>(&self, event: E) {
        if let Err(e) = self.leader.mediator().publish(event).await {
            tracing::warn!(event = E::NAME, error = %e, "saga event not delivered to every handler");
        }
    }
}
