//! Integration tests of catga-core, one binary for the whole crate.

mod codec;
mod effectively_once;
mod leader;
mod mediator;
mod messages;
mod pipeline;
mod saga;
mod stores;
mod transport;
