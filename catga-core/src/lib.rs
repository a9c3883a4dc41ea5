//! # catga-core
//!
//! The heart of Catga: messages, handlers, the [`Mediator`], pipeline
//! [`behavior`]s, and the in-memory [`transport`] and [`store`]s that make one
//! process a complete, embedded Catga.
//!
//! A short tour, by folder (each layer imports only those below it):
//! - Base: [`Message`], [`Request`], [`Event`] (plain serde types with a
//!   stable wire name; `IDEMPOTENT` and `RELIABLE` declared on the type),
//!   [`Metadata`], [`codec`], [`Error`] with a `Copy` [`ErrorKind`] and
//!   [`ResultExt`], [`backoff`] (full jitter, the [`RetryBudget`]).
//! - Ports: [`transport`] (the [`Transport`](transport::Transport) trait and an
//!   in-memory bus with NATS queue-group semantics) and [`store`]
//!   (idempotency with its [`UnitOfWork`](store::UnitOfWork), outbox, lock;
//!   in-memory implementations). `catga-nats` and `catga-redis` implement them.
//! - Dispatch (`dispatch/`): the [`Mediator`] (`send` a request to its one
//!   handler, `publish` an event to all), the [`Context`] a handler gets,
//!   [`RequestHandler`] / [`EventHandler`] (closures too), [`behavior`]s in
//!   onion order (tracing, timeout, retry, validation, concurrency limit,
//!   idempotency), on the builder or composed statically in a
//!   [`Stack`](behavior::Stack). It imports nothing of the runtime.
//! - Runtime (`runtime/`): a started [`Peer`] serves the transport, runs the
//!   outbox [`relay`], competes for [`leader`] tasks (fenced: what a leader
//!   sends carries its [`Fence`]) and coordinates [`saga`]s, started through
//!   a typed [`SagaHandle`](saga::SagaHandle).
//! - [`Catga::builder`] (`builder/`): registrations, [`merge`](CatgaBuilder::merge)
//!   of modules, one-call [`idempotency`](CatgaBuilder::idempotency); then
//!   [`build`](CatgaBuilder::build) a mediator for in-process dispatch, or
//!   [`start`](CatgaBuilder::start) a peer.
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
pub use metadata::{
    DURABLE_HEADER, FENCE_HEADER, Fence, Headers, Metadata, RELIABLE_HEADER, new_id,
};
pub use runtime::{Health, Peer, leader, relay, saga};
pub use uuid::Uuid;
