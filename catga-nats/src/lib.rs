//! # catga-nats
//!
//! The NATS transport for Catga: identical copies of a service share work with no
//! master.
//!
//! - **Requests** go by request/reply to `<prefix>.req.<NAME>`; every peer that
//!   handles NAME subscribes in queue group `<prefix>.<NAME>`, so NATS gives each
//!   request to exactly one of them. The reply carries a status and either the
//!   encoded response or the error (kind, code, message).
//! - **Events** go to `<prefix>.evt.<NAME>`; each service subscribes in a queue
//!   group named after itself, so every service gets each event once and its
//!   copies share them. Core events are at most once.
//! - **Reliable events** (declared on the type: `Event::RELIABLE`,
//!   `#[catga(reliable)]`; or [`NatsOptions::reliable_event`] on one peer) go
//!   through JetStream on `<prefix>.rel.<NAME>`, a stream that holds nothing
//!   else: stored, one durable consumer per (service, event),
//!   explicit acks, redelivery with backoff, dead-letter subject after too many
//!   failures; an event published while a service is down reaches it when it
//!   returns.
//! - **Admission and deadlines**: limits of messages and bytes in flight per
//!   name and per peer ([`NatsOptions::max_in_flight`] and siblings); a request
//!   over them is answered `overloaded` at once, one past its `Catga-Deadline`
//!   is answered `timeout` without running; counts in
//!   [`NatsTransport::stats`]. Each name is served by one subscription per
//!   runtime thread, so a hot message type uses every core. Graceful shutdown
//!   drains: stops taking messages, finishes those in flight, closes.
//! - **Discovery**: every peer answers the NATS service API (`$SRV.PING`,
//!   `INFO`, `STATS`), so `nats micro ls` lists Catga services.
//!
//! Where things are: `transport.rs` ([`NatsTransport`], starting and stopping
//! a peer's subscriptions), `connect.rs` (client options, reconnects),
//! `outgoing.rs` (requests and events leaving a peer), `serve.rs` (core
//! subscriptions), `admission.rs` (limits and counts),
//! `jetstream.rs` (streams, reliable events, dead letters), `dead_letters.rs`
//! (listing, replaying and purging dead letters), `discovery.rs` (service API),
//! `otel.rs` (trace context across NATS, with the `otel` feature),
//! `protocol.rs` (the wire contract), `shared.rs` (what they share),
//! `options.rs` (also read from configuration files with serde).
//!
//! - **Tracing**: each received message is handled in a `catga.receive` span
//!   (an OpenTelemetry consumer span with the messaging attributes) with its
//!   name and ids. With the `otel` feature, the application's global
//!   propagator writes the current context into the headers (`traceparent`,
//!   `tracestate`, `baggage` with the W3C ones) and reads it back as the
//!   remote parent of the receiving span, so a trace and its baggage continue
//!   across peers.
//!
//! The wire contract, for clients in other languages, is in `docs/protocol.md`;
//! [`protocol`] has the same names in code.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
//! use catga_core::Catga;
//! use catga_nats::{NatsOptions, NatsTransport};
//!
//! let nats = NatsTransport::connect(
//!     NatsOptions::new(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]).name("orders"),
//! )
//! .await?;
//! let peer = Catga::builder().service("orders").transport(nats).start().await?;
//! // ... peer.send(..), peer.publish(..) ...
//! peer.shutdown().await?; // drains: nothing in flight is lost
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

mod admission;
mod connect;
mod dead_letters;
mod discovery;
mod jetstream;
mod options;
#[cfg(feature = "otel")]
mod otel;
mod outgoing;
pub mod protocol;
mod serve;
mod shared;
mod transport;

pub use admission::ServeStats;
pub use dead_letters::{DeadLetter, DeadLetters};
pub use options::{Auth, JetStreamOptions, NatsOptions, Tls};
pub use transport::NatsTransport;
