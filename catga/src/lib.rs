//! # Catga
//!
//! Services as identical peers: a mediator dispatches commands, queries and
//! events to handlers; NATS queue groups spread the work across every running
//! copy of a service; Redis supplies idempotency, a transactional outbox and a
//! distributed lock. Run one copy on a laptop with everything in memory, then
//! scale the same binary out.
//!
//! This facade re-exports [`catga_core`] and, behind features, the other crates:
//!
//! | feature  | crate          | what it adds                                  |
//! |----------|----------------|-----------------------------------------------|
//! | `nats`   | `catga-nats`   | NATS transport (queue groups, JetStream)      |
//! | `redis`  | `catga-redis`  | Redis idempotency, outbox, lock, leader tasks |
//! | `macros` (default) | `catga-macros` | `#[derive(Request)]`, `#[derive(Event)]`, `#[handler]` |
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

pub use catga_core::*;

#[cfg(feature = "macros")]
pub use catga_macros::{Event, Request, handler};
#[cfg(feature = "nats")]
pub use catga_nats as nats;
#[cfg(feature = "redis")]
pub use catga_redis as redis;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
