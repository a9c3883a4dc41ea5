//! Store traits and their in-memory implementations.
//!
//! Each capability is a small trait: [`IdempotencyStore`] (with the
//! [`UnitOfWork`] its completions commit), [`OutboxStore`], [`LockStore`]. The in-memory implementations beside them make the embedded
//! default complete; `catga-redis` implements the same traits for a cluster of
//! peers. Every operation a trait names is atomic in every implementation.

pub mod idempotency;
pub mod lock;
pub mod outbox;
pub mod unit_of_work;

pub use idempotency::{Claim, Completed, Completion, IdempotencyStore, MemoryIdempotencyStore};
pub use lock::{Lease, LockStore, MemoryLockStore};
pub use outbox::{MemoryOutboxStore, OutboxEntry, OutboxRecord, OutboxStore};
pub use unit_of_work::{Condition, UnitOfWork, Write};

/// A random token that identifies one holder (of a claim or a lease): 32 hex
/// digits. It must differ between holders, not resist guessing (anyone who can
/// reach the store can delete the key anyway), so it comes from a per-thread
/// generator seeded once from the OS (64 bits of state) rather than a system
/// call each time.
pub fn random_token() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = crate::rng::u128();
    (0..32)
        .rev()
        .map(|i| char::from(HEX[((bits >> (i * 4)) & 0xf) as usize]))
        .collect()
}
