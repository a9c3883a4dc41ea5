//! Idempotency: run a handler once per message id, replay its response after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::error::Result;
use crate::store::outbox::{MemoryOutboxStore, OutboxEntry, OutboxRecord, OutboxStore};
use crate::store::unit_of_work::{Condition, UnitOfWork, Write};

/// The outcome of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim (as in-progress) and must run the handler, then
    /// `complete` or `release` with this token.
    Acquired {
        /// Token proving ownership of the claim.
        token: String,
    },
    /// Another attempt holds an unexpired claim.
    InProgress,
    /// A completed attempt stored this encoded response.
    Completed(Bytes),
}

/// What an attempt stores when it completes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Completion {
    /// The encoded outcome duplicates get back.
    pub response: Bytes,
    /// How long duplicates get it.
    pub retention: Duration,
    /// Events to append to the outbox.
    pub events: Vec<OutboxRecord>,
    /// State changes the handler staged, with their conditions.
    pub work: UnitOfWork,
}

impl Completion {
    /// A completion that stores `response` for `retention`, nothing else.
    pub fn new(response: Bytes, retention: Duration) -> Self {
        Completion {
            response,
            retention,
            events: Vec::new(),
            work: UnitOfWork::new(),
        }
    }

    /// With `events` for the outbox.
    #[must_use]
    pub fn events(mut self, events: Vec<OutboxRecord>) -> Self {
        self.events = events;
        self
    }

    /// With a unit of work to apply.
    #[must_use]
    pub fn work(mut self, work: UnitOfWork) -> Self {
        self.work = work;
        self
    }
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completed {
    /// Everything was applied and stored.
    Stored,
    /// The claim is not this attempt's any more: nothing was stored.
    ClaimLost,
    /// A condition of the unit of work did not hold (the state changed since
    /// the handler read it): nothing was stored, the claim is still held.
    ConditionFailed {
        /// The key whose value differed.
        key: String,
    },
    /// A write of the unit of work does not fit what its key holds (a hash
    /// write to a list, an increment of what is not an integer): nothing was
    /// stored, the claim is still held. Trying again cannot help until the
    /// data or the handler changes.
    WrongType {
        /// The key the write does not fit.
        key: String,
    },
}

/// Keeps claims and completed responses per key (handler scope + message id).
///
/// A key may begin with a hash tag, `{<partition>}`: stores that shard keys
/// shard it by the partition, so that the completion's record, its outbox
/// entries and the unit of work's keys built for that partition share one
/// shard (one hash slot on Redis Cluster).
///
/// States: absent → in-progress (a lease with a token) → completed (a response
/// kept for a retention time). A lease that expires frees the key again.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` unless it is claimed or completed.
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim>>;

    /// In one atomic step, only while `token` still holds the claim and every
    /// condition of the completion's unit of work holds: applies its writes,
    /// stores its response as completed for its retention and appends its
    /// events to this store's outbox. Otherwise stores nothing and says why.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, Result<Completed>>;

    /// Extends the claim to `lease` from now if `token` still holds it; returns
    /// `false` when it does not (the lease ran out and another attempt took it,
    /// or the outcome was stored). An attempt renews while its handler runs, so
    /// a lease only has to outlast a pause of the peer, not the handler.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Deletes the claim if `token` still holds it, so the next attempt runs again.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// A shared store is a store: pass `Arc<S>` (or `Arc<dyn IdempotencyStore>`)
/// wherever a store goes.
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<S> {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim>> {
        (**self).claim(key, lease)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, Result<Completed>> {
        (**self).complete(key, token, completion)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).renew(key, token, lease)
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>> {
        (**self).release(key, token)
    }
}

#[derive(Debug)]
enum Slot {
    InProgress { token: String, until: Instant },
    Completed { response: Bytes, until: Instant },
}

impl Slot {
    fn until(&self) -> Instant {
        match self {
            Slot::InProgress { until, .. } | Slot::Completed { until, .. } => *until,
        }
    }
}

/// In-process [`IdempotencyStore`]: enough for one peer, lost on restart.
///
/// Events completed with a response go to its [`outbox`](Self::outbox); give
/// that to the builder's `.outbox(..)` so a relay publishes them. Units of
/// work apply to its own key-value state, read with [`get`](Self::get),
/// [`hash_get`](Self::hash_get) and [`list`](Self::list).
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    slots: Mutex<HashMap<String, Slot>>,
    state: Mutex<HashMap<String, Value>>,
    outbox: Arc<MemoryOutboxStore>,
}

/// A value in the in-memory state.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Bytes),
    Hash(HashMap<String, Bytes>),
    List(Vec<Bytes>),
}

/// The integer a value holds as Redis reads one (`0`, or an optional `-`
/// and digits without a leading zero, within 64 bits): `Some(0)` when
/// absent, `None` when it is not one (Redis refuses to increment it).
fn as_int(value: Option<&Bytes>) -> Option<i64> {
    let Some(b) = value else {
        return Some(0);
    };
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = b.as_ref() == b"0"
        || (!digits.is_empty() && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit));
    if !canonical {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn int_bytes(n: i64) -> Bytes {
    Bytes::from(n.to_string())
}

/// Whether `condition` holds in `state`.
fn holds(state: &HashMap<String, Value>, condition: &Condition) -> bool {
    match condition {
        Condition::Equals { key, field, value } => {
            let current = match (state.get(key), field) {
                (Some(Value::Bytes(b)), None) => Some(b),
                (Some(Value::Hash(h)), Some(f)) => h.get(f),
                _ => None,
            };
            current == value.as_ref()
        }
    }
}

/// Applies `write` to `state`, or refuses it as Redis would: a write that
/// does not fit what its key holds (a hash write to a list, an increment of
/// what is not an integer, or past the 64-bit range).
fn apply(state: &mut HashMap<String, Value>, write: &Write) -> Option<()> {
    match write {
        Write::Set { key, value } => {
            state.insert(key.clone(), Value::Bytes(value.clone()));
        }
        Write::Delete { key } => {
            state.remove(key);
        }
        Write::HashSet { key, field, value } => {
            hash_of(state, key)?.insert(field.clone(), value.clone());
        }
        Write::HashDelete { key, field } => match state.get_mut(key) {
            None => {}
            Some(Value::Hash(h)) => {
                h.remove(field);
                // As in Redis: a hash whose last field is gone is gone.
                if h.is_empty() {
                    state.remove(key);
                }
            }
            Some(Value::Bytes(_) | Value::List(_)) => return None,
        },
        Write::Increment {
            key,
            field: None,
            by,
        } => {
            let now = match state.get(key) {
                None => 0,
                Some(Value::Bytes(b)) => as_int(Some(b))?,
                Some(Value::Hash(_) | Value::List(_)) => return None,
            };
            state.insert(key.clone(), Value::Bytes(int_bytes(now.checked_add(*by)?)));
        }
        Write::Increment {
            key,
            field: Some(field),
            by,
        } => {
            let h = hash_of(state, key)?;
            let now = as_int(h.get(field))?;
            h.insert(field.clone(), int_bytes(now.checked_add(*by)?));
        }
        Write::Append { key, value } => {
            let entry = state
                .entry(key.clone())
                .or_insert_with(|| Value::List(Vec::new()));
            match entry {
                Value::List(list) => list.push(value.clone()),
                Value::Bytes(_) | Value::Hash(_) => return None,
            }
        }
    }
    Some(())
}

/// The hash at `key` (made when absent), or `None` when `key` holds another type.
fn hash_of<'s>(
    state: &'s mut HashMap<String, Value>,
    key: &str,
) -> Option<&'s mut HashMap<String, Bytes>> {
    match state
        .entry(key.to_owned())
        .or_insert_with(|| Value::Hash(HashMap::new()))
    {
        Value::Hash(h) => Some(h),
        Value::Bytes(_) | Value::List(_) => None,
    }
}

impl MemoryIdempotencyStore {
    /// An empty store with an empty outbox.
    pub fn new() -> Self {
        MemoryIdempotencyStore::default()
    }

    /// The outbox completed events are written to.
    pub fn outbox(&self) -> Arc<MemoryOutboxStore> {
        self.outbox.clone()
    }

    /// The value at `key` in the unit-of-work state.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        match self.state().get(key) {
            Some(Value::Bytes(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Field `field` of the hash at `key` in the unit-of-work state.
    pub fn hash_get(&self, key: &str, field: &str) -> Option<Bytes> {
        match self.state().get(key) {
            Some(Value::Hash(h)) => h.get(field).cloned(),
            _ => None,
        }
    }

    /// The list at `key` in the unit-of-work state.
    pub fn list(&self, key: &str) -> Vec<Bytes> {
        match self.state().get(key) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live keys (expired ones are dropped first).
    pub fn len(&self) -> usize {
        let mut slots = self.lock();
        let now = Instant::now();
        slots.retain(|_, s| s.until() > now);
        slots.len()
    }

    /// Whether no live key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this lock cannot leave a slot half-written.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The store's own outbox (see [`MemoryIdempotencyStore::outbox`]), so one
/// value serves [`CatgaBuilder::idempotency`](crate::CatgaBuilder::idempotency).
impl OutboxStore for MemoryIdempotencyStore {
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>> {
        self.outbox.append(records)
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>> {
        self.outbox.claim(consumer, max, min_idle)
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>> {
        self.outbox.ack(ids)
    }

    fn dead_letter<'a>(
        &'a self,
        entry: &'a OutboxEntry,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        self.outbox.dead_letter(entry, reason)
    }

    fn backlog(&self) -> BoxFuture<'_, Result<usize>> {
        self.outbox.backlog()
    }

    fn outbox_identity(&self) -> Option<String> {
        self.outbox.outbox_identity()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim>> {
        let now = Instant::now();
        let mut slots = self.lock();
        if slots.len() > 4096 && slots.len().is_power_of_two() {
            slots.retain(|_, s| s.until() > now);
        }
        let claim = match slots.get(key) {
            Some(Slot::Completed { response, until }) if *until > now => {
                Claim::Completed(response.clone())
            }
            Some(Slot::InProgress { until, .. }) if *until > now => Claim::InProgress,
            _ => {
                let token = super::random_token();
                slots.insert(
                    key.to_owned(),
                    Slot::InProgress {
                        token: token.clone(),
                        until: now + lease,
                    },
                );
                Claim::Acquired { token }
            }
        };
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, Result<Completed>> {
        let mut slots = self.lock();
        // A claim past its lease is lost even when nobody took it over yet,
        // as on Redis, where it has expired: the attempt outlived its lease.
        let now = Instant::now();
        let ours = matches!(
            slots.get(key),
            Some(Slot::InProgress { token: t, until }) if t == token && *until > now
        );
        if !ours {
            return Box::pin(std::future::ready(Ok(Completed::ClaimLost)));
        }
        // Under the slot lock, then the state lock: no duplicate can see
        // "completed" before the writes and events are in.
        let mut state = self.state();
        let failed = completion
            .work
            .conditions()
            .iter()
            .find(|c| !holds(&state, c));
        if let Some(failed) = failed {
            let key = failed.key().to_owned();
            return Box::pin(std::future::ready(Ok(Completed::ConditionFailed { key })));
        }
        // On a copy of what the writes touch, so that a write that does not
        // fit leaves nothing written.
        let keys = completion.work.keys();
        let mut touched: HashMap<String, Value> = keys
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), state.get(*k)?.clone())))
            .collect();
        for write in completion.work.writes() {
            if apply(&mut touched, write).is_none() {
                let key = write.key().to_owned();
                return Box::pin(std::future::ready(Ok(Completed::WrongType { key })));
            }
        }
        for k in keys {
            match touched.remove(k) {
                Some(v) => state.insert(k.to_owned(), v),
                None => state.remove(k),
            };
        }
        drop(state);
        self.outbox.append_now(completion.events);
        slots.insert(
            key.to_owned(),
            Slot::Completed {
                response: completion.response,
                until: Instant::now() + completion.retention,
            },
        );
        Box::pin(std::future::ready(Ok(Completed::Stored)))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let mut slots = self.lock();
        let renewed = match slots.get_mut(key) {
            Some(Slot::InProgress { token: t, until }) if t == token && *until > now => {
                *until = now + lease;
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>> {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::InProgress { token: t, .. }) if t == token) {
            slots.remove(key);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
