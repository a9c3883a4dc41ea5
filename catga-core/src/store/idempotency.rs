//! Idempotency: run a handler once per message id, replay its response after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::error::Result;
use crate::store::outbox::{MemoryOutboxStore, OutboxRecord};

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

/// Keeps claims and completed responses per key (handler scope + message id).
///
/// States: absent → in-progress (a lease with a token) → completed (a response
/// kept for a retention time). A lease that expires frees the key again.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` unless it is claimed or completed.
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim>>;

    /// Stores `response` as completed for `retention` and appends `events` to
    /// this store's outbox, in one atomic step, only while `token` still holds
    /// the claim; returns `false` (and stores nothing) otherwise.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        response: Bytes,
        retention: Duration,
        events: Vec<OutboxRecord>,
    ) -> BoxFuture<'a, Result<bool>>;

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
/// that to the builder's `.outbox(..)` so a relay publishes them.
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    slots: Mutex<HashMap<String, Slot>>,
    outbox: Arc<MemoryOutboxStore>,
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
        response: Bytes,
        retention: Duration,
        events: Vec<OutboxRecord>,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut slots = self.lock();
        let ours = matches!(slots.get(key), Some(Slot::InProgress { token: t, .. }) if t == token);
        if ours {
            // Under the slot lock, so no duplicate can see "completed" before
            // the events are in the outbox.
            self.outbox.append_now(events);
            slots.insert(
                key.to_owned(),
                Slot::Completed {
                    response,
                    until: Instant::now() + retention,
                },
            );
        }
        Box::pin(std::future::ready(Ok(ours)))
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
