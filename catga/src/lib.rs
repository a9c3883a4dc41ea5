//! # Catga
//!
//! Services as identical peers: a mediator dispatches commands, queries and
//! events to handlers; NATS queue groups spread the work across every running
//! copy of a service; Redis supplies idempotency, a transactional outbox and a
//! distributed lock. Run one copy on a laptop with everything in memory, then
//! scale the same binary out.
//!
//! A short tour:
//! - Declare messages with `#[derive(Request)]` / `#[derive(Event)]` and handlers
//!   with `#[handler]`; [`Catga::builder`]`().auto_register().build()` gives a
//!   [`Mediator`]: `send` a request to its one handler, `publish` an event to all.
//! - Wrap dispatches in [`behavior`]s: tracing, timeout, retry, validation,
//!   concurrency limit, idempotency (with a transactional outbox).
//! - Add a transport (`catga::nats`, feature `nats`) and copies of a service
//!   share its requests and events; add Redis (`catga::redis`) and they share
//!   idempotency records, the outbox, locks and saga state. Such a peer is
//!   [`start`](CatgaBuilder::start)ed: the returned [`Peer`] owns what runs in
//!   its background until `shutdown`.
//! - Declare on the messages what must hold across copies:
//!   `#[catga(idempotent)]` (once per message id, with `.idempotency(store)`)
//!   and, on events, `#[catga(reliable)]` (stored until handled).
//! - Compose a service of modules with [`CatgaBuilder::merge`].
//! - Run work on one peer at a time with [`leader`] tasks, and business flows
//!   with compensation as [`saga`]s.
//!
//! This facade re-exports [`catga_core`] and, behind features, the other crates:
//!
//! | feature  | crate          | what it adds                                  |
//! |----------|----------------|-----------------------------------------------|
//! | `nats`   | `catga-nats`   | NATS transport (queue groups, JetStream)      |
//! | `redis`  | `catga-redis`  | Redis idempotency, outbox, lock, saga store   |
//! | `macros` (default) | `catga-macros` | `#[derive(Request)]`, `#[derive(Event)]`, `#[handler]` |
//! | `otel`   | `catga-nats`   | OpenTelemetry traces continued across NATS (implies `nats`) |
//! | `metrics` | `catga-core`, `catga-nats` | the `Metrics` behavior, `Peer::record_metrics`, the transport's counts |
//! | `redis-tls` | `catga-redis` | `rediss://` (TLS to Redis; implies `redis`) |
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
