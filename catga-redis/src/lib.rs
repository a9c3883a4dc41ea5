//! # catga-redis
//!
//! Redis behind the store traits of `catga_core::store`, so every copy of a
//! service shares one view: [`RedisStore`] is an idempotency store, a
//! transactional outbox and a fenced lock, on one Redis node or a Redis Cluster.
//!
//! - **Idempotency** (with `catga_core::behavior::idempotency::Idempotency`): a key
//!   per (handler scope, message id), claimed with a lease, completed with the
//!   encoded response and a retention time. Concurrent duplicates run the handler
//!   once; a completion whose lease expired cannot overwrite a newer attempt.
//! - **Outbox**: events a handler publishes are written with its completion in
//!   one script, to a Redis Stream; the relay on every peer shares the streams
//!   through a consumer group, reclaims entries of a crashed relay (XAUTOCLAIM),
//!   dead-letters poison entries and removes the consumers of dead peers.
//! - **Unit of work**: the writes a handler staged (`Context::stage`) are
//!   applied by the same completion script, after checking the conditions
//!   staged with them. Their keys must share the completion's hash slot: build
//!   them with [`RedisStore::partition_key`] from the message's partition.
//! - **Lock**: `SET NX PX` with a random token and, only when it succeeds, a
//!   fencing counter `INCR`, in one script (so the counter holds the latest
//!   term's fence and a message with a lower one is refused); compare-and-act
//!   renew and release scripts. Leader-only tasks (`CatgaBuilder::leader_task`)
//!   use it through `.lock_store(..)`.
//! - **Sagas**: saga state with optimistic versioning and the coordinator's
//!   fencing token checked in one script (`.saga_store(..)`); a saga is listed
//!   as unfinished in the script that creates it and unlisted (and given its
//!   retention) in the one that finishes it.
//!
//! Needs Redis 7.0 or later (the claim is one `SET … NX … GET`); on an older
//! server a claim fails with a non-retryable error that says so.
//!
//! Each atomic operation that must compare before it acts is one Lua script in
//! `catga-redis/lua/`. Keys of one operation share a hash tag, so the same code
//! runs on Redis Cluster. The files follow the stores: `options.rs` (also read
//! from configuration files with serde), `conn.rs` (one connection type over a
//! node or a cluster), `keys.rs` (key layout and shards), `store.rs`
//! ([`RedisStore`], scripts; `from_connection_manager` wraps a connection the
//! application has), `idempotency.rs`, `outbox.rs`, `lock.rs`, `saga.rs`.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
//! use std::sync::Arc;
//! use catga_core::{Catga, behavior::idempotency::Idempotency};
//! use catga_redis::{RedisOptions, RedisStore};
//!
//! let redis = RedisStore::connect(RedisOptions::new("redis://127.0.0.1:6379/")).await?;
//! let peer = Catga::builder()
//!     .behavior(Idempotency::new(redis.clone()))
//!     .outbox(Arc::new(redis.clone()))
//!     .lock_store(redis)
//!     .start()
//!     .await?;
//! peer.shutdown().await?;
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

mod conn;
mod dead_letters;
mod idempotency;
mod keys;
mod lock;
mod options;
mod outbox;
mod saga;
mod store;

pub use dead_letters::{OutboxDeadLetter, RelayConsumer};
pub use options::RedisOptions;
pub use store::RedisStore;
