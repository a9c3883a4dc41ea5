//! The peer runtime, layered on the mediator: what runs in the background of
//! a started peer.
//!
//! - [`Peer`]: what [`CatgaBuilder::start`](crate::CatgaBuilder::start)
//!   returns. It serves the transport, runs the outbox relay, competes for
//!   leader tasks and coordinates sagas, and owns all of it: shut it down
//!   with [`Peer::shutdown`] (dropping it stops everything without waiting,
//!   with a warning).
//! - [`relay`]: the outbox relay.
//! - [`leader`]: leader-only tasks behind a fenced lock.
//! - [`saga`]: persisted sagas with compensation, coordinated by a leader.
//!
//! Nothing in the dispatch layer (the mediator, routes, behaviors) imports
//! anything from here.

pub mod leader;
mod peer;
pub mod relay;
pub mod saga;

pub(crate) use peer::Plan;
pub use peer::{Check, Health, Peer};
