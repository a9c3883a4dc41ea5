//! The dispatch layer: a message in, its handlers run, an answer out.
//!
//! Files from the bottom up (each imports only those before it):
//! - `handle.rs`: the [`Mediator`](crate::Mediator) handle and what
//!   `build()` fixed for it.
//! - `context.rs`: the [`Context`](crate::Context) a handler gets.
//! - `erased.rs`: handler futures with their type erased, held in place
//!   (no allocation) when small.
//! - [`behavior`]: pipeline behaviors around a handler.
//! - `handler.rs`: the handler traits.
//! - `route.rs`: a message type's handler(s) with their pipeline, typed.
//! - `mediator.rs`: `send` and `publish`, from the mediator and from a context.
//! - `inbound.rs`: the way in from a transport.
//!
//! Nothing here imports the runtime (`crate::runtime`): serving, the relay,
//! leaders and sagas are layered on top.

pub mod behavior;
pub(crate) mod context;
pub(crate) mod erased;
pub(crate) mod handle;
pub(crate) mod handler;
pub(crate) mod inbound;
mod mediator;
pub(crate) mod route;
