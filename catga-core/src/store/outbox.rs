//! Transactional outbox: events kept with the handler's result, relayed later.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::Result;

/// An event waiting in the outbox, encoded as it will go on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Event wire name.
    pub name: String,
    /// Encoded event.
    pub payload: Bytes,
    /// Content type of `payload`.
    pub content_type: String,
    /// Message id (the transport's dedup id).
    pub message_id: Uuid,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
}

/// An outbox record with its store id and how often it was handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Store-assigned id, increasing in append order.
    pub id: String,
    /// The event.
    pub record: OutboxRecord,
    /// How many times the entry was handed to a relay, this time included.
    pub deliveries: u32,
}

/// A durable queue of events shared by every relay.
///
/// An entry handed to one relay by [`claim`](OutboxStore::claim) is not handed
/// to another until it stays unacknowledged for `min_idle` (its relay crashed).
pub trait OutboxStore: Send + Sync + 'static {
    /// Appends records atomically, in order.
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>>;

    /// Hands `consumer` up to `max` entries: first those left unacknowledged by
    /// any relay for at least `min_idle`, then new ones.
    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>>;

    /// Removes relayed entries.
    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// Moves an entry that cannot be relayed to the dead-letter list with `reason`.
    fn dead_letter<'a>(
        &'a self,
        entry: &'a OutboxEntry,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Entries not yet acknowledged (the backlog).
    fn backlog(&self) -> BoxFuture<'_, Result<usize>>;

    /// Which outbox this is, when the store can tell: two stores that give
    /// the same identity read and write the same entries, two that give
    /// different ones do not. The builder compares the store given to
    /// [`CatgaBuilder::idempotency`](crate::CatgaBuilder::idempotency) with
    /// the outbox setting's, so that events held back under idempotency are
    /// not stored where no relay reads them (an `Idempotency` behavior added
    /// with `.behavior(..)` is not compared). Default `None`: cannot tell,
    /// not compared.
    fn outbox_identity(&self) -> Option<String> {
        None
    }
}

/// A shared store is a store: pass `Arc<S>` (or `Arc<dyn OutboxStore>`).
impl<S: OutboxStore + ?Sized> OutboxStore for std::sync::Arc<S> {
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>> {
        (**self).append(records)
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>> {
        (**self).claim(consumer, max, min_idle)
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>> {
        (**self).ack(ids)
    }

    fn dead_letter<'a>(
        &'a self,
        entry: &'a OutboxEntry,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        (**self).dead_letter(entry, reason)
    }

    fn backlog(&self) -> BoxFuture<'_, Result<usize>> {
        (**self).backlog()
    }

    fn outbox_identity(&self) -> Option<String> {
        (**self).outbox_identity()
    }
}

#[derive(Debug)]
struct Pending {
    record: OutboxRecord,
    claimed: Option<(String, Instant)>,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct OutboxState {
    next: u64,
    entries: BTreeMap<u64, Pending>,
    dead: Vec<(OutboxEntry, String)>,
}

/// In-process [`OutboxStore`].
#[derive(Debug, Default)]
pub struct MemoryOutboxStore {
    state: Mutex<OutboxState>,
}

impl MemoryOutboxStore {
    /// An empty outbox.
    pub fn new() -> Self {
        MemoryOutboxStore::default()
    }

    /// Entries moved to the dead-letter list, with their reasons.
    pub fn dead_letters(&self) -> Vec<(OutboxEntry, String)> {
        self.lock().dead.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryOutboxStore {
    pub(crate) fn append_now(&self, records: Vec<OutboxRecord>) {
        let mut state = self.lock();
        for record in records {
            state.next += 1;
            let id = state.next;
            state.entries.insert(
                id,
                Pending {
                    record,
                    claimed: None,
                    deliveries: 0,
                },
            );
        }
    }
}

impl OutboxStore for MemoryOutboxStore {
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>> {
        self.append_now(records);
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut out = Vec::new();
        // Reclaim idle entries first, then new ones, like XAUTOCLAIM + XREADGROUP.
        for pass in [true, false] {
            for (id, p) in state.entries.iter_mut() {
                if out.len() >= max {
                    break;
                }
                let take = match &p.claimed {
                    Some((_, at)) => pass && now.duration_since(*at) >= min_idle,
                    None => !pass,
                };
                if take {
                    p.claimed = Some((consumer.to_owned(), now));
                    p.deliveries += 1;
                    out.push(OutboxEntry {
                        id: id.to_string(),
                        record: p.record.clone(),
                        deliveries: p.deliveries,
                    });
                }
            }
        }
        Box::pin(std::future::ready(Ok(out)))
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        for id in ids {
            if let Ok(n) = id.parse::<u64>() {
                state.entries.remove(&n);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letter<'a>(
        &'a self,
        entry: &'a OutboxEntry,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        if let Ok(n) = entry.id.parse::<u64>() {
            state.entries.remove(&n);
        }
        state.dead.push((entry.clone(), reason.to_owned()));
        Box::pin(std::future::ready(Ok(())))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<usize>> {
        let n = self.lock().entries.len();
        Box::pin(std::future::ready(Ok(n)))
    }

    /// This value's address: another `MemoryOutboxStore` is another outbox
    /// (an `Arc` of this one is this one).
    fn outbox_identity(&self) -> Option<String> {
        Some(format!("memory outbox at {:p}", std::ptr::from_ref(self)))
    }
}
