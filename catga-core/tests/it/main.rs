//! Integration tests of catga-core, one binary for the whole crate.

mod codec;
mod durable;
mod effectively_once;
mod layers;
mod leader;
mod mediator;
mod messages;
mod peer;
mod pipeline;
mod saga;
mod stores;
mod transport;
