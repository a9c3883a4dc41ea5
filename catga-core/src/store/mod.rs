//! Store traits and their in-memory implementations.
//!
//! Each capability is a small trait: [`IdempotencyStore`], [`OutboxStore`],
//! [`LockStore`]. The in-memory implementations beside them make the embedded
//! default complete; `catga-redis` implements the same traits for a cluster of
//! peers. Every operation a trait names is atomic in every implementation.

pub mod idempotency;
pub mod lock;
pub mod outbox;

pub use idempotency::{Claim, IdempotencyStore, MemoryIdempotencyStore};
pub use lock::{Lease, LockStore, MemoryLockStore};
pub use outbox::{MemoryOutboxStore, OutboxEntry, OutboxRecord, OutboxStore};

/// A random token that identifies one holder (of a claim or a lease).
pub fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
