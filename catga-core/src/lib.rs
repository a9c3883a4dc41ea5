//! # catga-core
//!
//! The heart of Catga: messages, handlers, the [`Mediator`], pipeline
//! [`behavior`]s, and the in-memory [`transport`] and [`store`]s that make one
//! process a complete, embedded Catga.
//!
//! A short tour:
//! - [`Message`], [`Request`], [`Event`]: plain serde types with a stable wire name.
//! - [`RequestHandler`], [`EventHandler`]: `async fn handle(&self, msg, &Context)`;
//!   closures work too ([`CatgaBuilder::request_fn`]).
//! - [`Catga::builder`] registers everything and [`build`](CatgaBuilder::build)s a
//!   [`Mediator`]: `send` a request to its one handler, `publish` an event to all.
//! - [`Context`] carries [`Metadata`] (ids, deadline, headers) and sends follow-up
//!   messages in the same conversation.
//! - [`behavior`]: tracing, timeout, retry, validation, concurrency limit and
//!   idempotency around every dispatch, in onion order.
//! - [`transport`]: the [`Transport`](transport::Transport) trait and an in-memory
//!   bus with the semantics of NATS queue groups; `catga-nats` carries the same
//!   across machines.
//! - [`store`]: idempotency, outbox and lock traits with in-memory implementations;
//!   `catga-redis` backs them for a cluster. A handler under idempotency stages
//!   its state changes as a [`UnitOfWork`](store::UnitOfWork)
//!   ([`Context::stage`]): they commit with its response and events, or not at all.
//! - [`relay`]: the outbox relay, publishing events stored with handler results.
//! - [`saga`]: persisted sagas with compensation, coordinated by a leader.
//! - [`leader`]: leader-only tasks, run on exactly one peer at a time through a
//!   fenced lock; what a leader sends carries its [`Fence`], refused once a newer
//!   term began.
//! - [`backoff`]: exponential backoff with full jitter, the one way Catga waits
//!   before trying again.
//! - [`Error`]: one error type with a `Copy` [`ErrorKind`] and `is_retryable()`.
//!
//! ```
//! use catga_core::{Catga, Context, Event, Message, Request, Result};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct CreateOrder { item: String, qty: u32 }
//! impl Message for CreateOrder { const NAME: &'static str = "orders.CreateOrder"; }
//! impl Request for CreateOrder { type Response = u64; }
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct OrderCreated { id: u64 }
//! impl Message for OrderCreated { const NAME: &'static str = "orders.OrderCreated"; }
//! impl Event for OrderCreated {}
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let mediator = Catga::builder()
//!     .request_fn(|cmd: CreateOrder, ctx: Context| async move {
//!         let id = u64::from(cmd.qty) * 100;
//!         ctx.publish(OrderCreated { id }).await?;
//!         Ok(id)
//!     })
//!     .event_fn(|e: OrderCreated, _| async move { println!("created {}", e.id); Ok(()) })
//!     .build()?;
//! let id = mediator.send(CreateOrder { item: "book".into(), qty: 2 }).await?;
//! assert_eq!(id, 200);
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
pub mod backoff;
mod builder;
pub mod codec;
mod dispatch;
mod error;
mod message;
mod metadata;
mod rng;
pub mod runtime;
pub mod store;
pub mod transport;

pub use backoff::RetryBudget;
pub use builder::{Catga, CatgaBuilder};
pub use codec::{Codec, Format};
pub use dispatch::behavior;
pub use dispatch::context::Context;
pub use dispatch::handle::Mediator;
pub use dispatch::handler::{EventHandler, FnHandler, RequestHandler};
pub use error::{Error, ErrorKind, Result, ResultExt, panic_message};
pub use message::{Event, Message, MessageKind, Request, validate_name};
pub use metadata::{FENCE_HEADER, Fence, Headers, Metadata, RELIABLE_HEADER, new_id};
pub use runtime::{Peer, leader, relay, saga};
pub use uuid::Uuid;
