//! Persisted saga state and the store that keeps it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::codec::Format;
use crate::error::{Error, ErrorKind, Result};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// A step failed; undoing the completed steps in reverse.
    Compensating,
    /// Every step ran.
    Completed,
    /// A step failed and every completed step was undone.
    Compensated,
    /// A compensation kept failing; an operator must look at it.
    Failed,
}

impl SagaStatus {
    /// Whether the saga will not move any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }
}

/// One line of a saga's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The step concerned (empty for the saga itself).
    pub step: String,
    /// What happened: `started`, `completed`, `skipped`, `failed`,
    /// `compensated`, `compensation_failed`, `finished`.
    pub what: String,
    /// Details (an error message, a status).
    pub detail: String,
}

/// Everything persisted about one saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// Saga instance id (also the correlation id of its commands).
    pub id: Uuid,
    /// Name of the saga definition.
    pub saga: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// Index of the next step to run forward.
    pub step: u32,
    /// Steps that completed, in order (the ones compensation undoes).
    pub completed: Vec<u32>,
    /// The saga data, MessagePack-encoded.
    pub data: Vec<u8>,
    /// Bumped by every save; a save must name the version it read.
    pub version: u64,
    /// Fencing token of the coordinator that last wrote it.
    pub fence: u64,
    /// What happened, oldest first.
    pub history: Vec<SagaEvent>,
    /// Why it is compensating, compensated or failed.
    pub error: Option<String>,
    /// The step that failed (forward or in compensation).
    pub failed_step: Option<String>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SagaState {
    pub(crate) fn new(id: Uuid, saga: &str, data: Vec<u8>) -> SagaState {
        SagaState {
            id,
            saga: saga.to_owned(),
            status: SagaStatus::Running,
            step: 0,
            completed: Vec::new(),
            data,
            version: 0,
            fence: 0,
            history: vec![SagaEvent {
                at_ms: now_ms(),
                step: String::new(),
                what: "started".into(),
                detail: String::new(),
            }],
            error: None,
            failed_step: None,
        }
    }

    /// The saga data.
    pub fn data<D: DeserializeOwned>(&self) -> Result<D> {
        Format::MsgPack.decode(&self.data)
    }

    pub(crate) fn record(&mut self, step: &str, what: &str, detail: impl Into<String>) {
        self.history.push(SagaEvent {
            at_ms: now_ms(),
            step: step.to_owned(),
            what: what.to_owned(),
            detail: detail.into(),
        });
    }

    /// Encodes the state for a store.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Format::MsgPack.encode(self)
    }

    /// Decodes a state written by [`SagaState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SagaState> {
        Format::MsgPack.decode(bytes)
    }
}

/// A conflict on save: someone else wrote the saga since it was read.
pub fn conflict(id: Uuid, why: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("saga {id} was not saved: {why}; its new owner carries on"),
    )
}

/// Keeps saga states with optimistic versioning and fencing.
pub trait SagaStore: Send + Sync + 'static {
    /// Stores a new saga (version 0) and lists it as unfinished, in one atomic
    /// step, unless one with its id exists; returns whether it stored it (so
    /// starting a saga with a chosen id is idempotent).
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<bool>>;

    /// The saga with `id`, if any.
    fn load(&self, id: Uuid) -> BoxFuture<'_, Result<Option<SagaState>>>;

    /// Writes `state` only if the stored version is `state.version - 1` and the
    /// stored fence is not greater than `state.fence`; otherwise fails with
    /// [`ErrorKind::Conflict`]. A finished saga leaves the unfinished list in
    /// the same atomic step, and is kept for the store's retention time.
    fn save<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<()>>;

    /// Ids of the unfinished sagas of definition `saga`.
    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>>;

    /// How many sagas of definition `saga` are unfinished (for admission, see
    /// [`Saga::max_backlog`](super::Saga::max_backlog)); by default the length
    /// of [`SagaStore::unfinished`], which a store should answer cheaper.
    fn count_unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move { Ok(self.unfinished(saga).await?.len()) })
    }

    /// Drops a finished (or vanished) saga from the unfinished list. Stores that
    /// keep that list apart from the state must implement it: a writer may die
    /// between saving a finished state and updating the list, and the
    /// coordinator calls this when it finds such an entry.
    fn forget<'a>(&'a self, saga: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>>;

    /// Ids of the sagas of definition `saga` that ended
    /// [`Failed`](SagaStatus::Failed) and are still kept (for an operator:
    /// see [`resume_compensation`]). By default this store cannot list them.
    fn failed<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        Box::pin(std::future::ready(Err(Error::new(
            ErrorKind::Config,
            format!("this saga store cannot list the failed sagas of `{saga}`"),
        ))))
    }
}

/// Resumes the compensation of saga `id`, which ended
/// [`Failed`](SagaStatus::Failed) because an undo kept failing: once the
/// cause is fixed, an operator (the `catga saga compensate` command) sets it
/// back to compensating, and the coordinator, wherever it leads, undoes what
/// is left (the step that failed to undo first). Returns the saved state;
/// fails when the saga is not failed.
pub async fn resume_compensation(store: &dyn SagaStore, id: Uuid) -> Result<SagaState> {
    let mut state = store.load(id).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Validation,
            format!("no saga {id} (or it expired)"),
        )
    })?;
    if state.status != SagaStatus::Failed {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "saga {id} is {:?}, not failed: nothing to resume",
                state.status
            ),
        ));
    }
    state.status = SagaStatus::Compensating;
    state.version += 1;
    state.record("", "compensation_resumed", "by an operator");
    store.save(&state).await?;
    Ok(state)
}

/// A shared store is a store: pass `Arc<S>` (or `Arc<dyn SagaStore>`).
impl<S: SagaStore + ?Sized> SagaStore for std::sync::Arc<S> {
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<bool>> {
        (**self).create(state)
    }

    fn load(&self, id: Uuid) -> BoxFuture<'_, Result<Option<SagaState>>> {
        (**self).load(id)
    }

    fn save<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<()>> {
        (**self).save(state)
    }

    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        (**self).unfinished(saga)
    }

    fn count_unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<usize>> {
        (**self).count_unfinished(saga)
    }

    fn forget<'a>(&'a self, saga: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        (**self).forget(saga, id)
    }

    fn failed<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        (**self).failed(saga)
    }
}

/// In-process [`SagaStore`]. Finished sagas are kept for a retention time
/// (default 7 days), then dropped.
#[derive(Debug)]
pub struct MemorySagaStore {
    sagas: Mutex<Sagas>,
    retention: Duration,
}

#[derive(Debug, Default)]
struct Sagas {
    states: HashMap<Uuid, SagaState>,
    /// Finished sagas in the order they finished, with when they expire.
    finished: VecDeque<(Instant, Uuid)>,
}

impl Default for MemorySagaStore {
    fn default() -> Self {
        MemorySagaStore::new()
    }
}

impl MemorySagaStore {
    /// An empty store.
    pub fn new() -> Self {
        MemorySagaStore {
            sagas: Mutex::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// How long a finished saga's state is kept for reading.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sagas stored, finished ones within their retention included.
    pub fn len(&self) -> usize {
        self.lock().states.len()
    }

    /// Whether no saga is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sagas> {
        let mut sagas = self.sagas.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some(&(until, id)) = sagas.finished.front() {
            if until > now {
                break;
            }
            sagas.finished.pop_front();
            sagas.states.remove(&id);
        }
        sagas
    }
}

impl SagaStore for MemorySagaStore {
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<bool>> {
        let mut sagas = self.lock();
        let created = !sagas.states.contains_key(&state.id);
        if created {
            sagas.states.insert(state.id, state.clone());
        }
        Box::pin(std::future::ready(Ok(created)))
    }

    fn load(&self, id: Uuid) -> BoxFuture<'_, Result<Option<SagaState>>> {
        let state = self.lock().states.get(&id).cloned();
        Box::pin(std::future::ready(Ok(state)))
    }

    fn save<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<()>> {
        let mut sagas = self.lock();
        let result = match sagas.states.get(&state.id) {
            None => Err(conflict(state.id, "it does not exist")),
            Some(old) if old.version + 1 != state.version => {
                Err(conflict(state.id, "its version changed"))
            }
            Some(old) if old.fence > state.fence => {
                Err(conflict(state.id, "a newer coordinator wrote it"))
            }
            Some(old) => {
                let finishes = state.status.is_finished() && !old.status.is_finished();
                let resumes = !state.status.is_finished() && old.status.is_finished();
                sagas.states.insert(state.id, state.clone());
                if finishes {
                    let until = Instant::now() + self.retention;
                    sagas.finished.push_back((until, state.id));
                }
                if resumes {
                    sagas.finished.retain(|(_, id)| *id != state.id);
                }
                Ok(())
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn forget<'a>(&'a self, _saga: &'a str, _id: Uuid) -> BoxFuture<'a, Result<()>> {
        // The list is derived from the states themselves.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        let mut ids: Vec<Uuid> = self
            .lock()
            .states
            .values()
            .filter(|s| s.saga == saga && !s.status.is_finished())
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        Box::pin(std::future::ready(Ok(ids)))
    }

    fn failed<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        let mut ids: Vec<Uuid> = self
            .lock()
            .states
            .values()
            .filter(|s| s.saga == saga && s.status == SagaStatus::Failed)
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        Box::pin(std::future::ready(Ok(ids)))
    }
}
