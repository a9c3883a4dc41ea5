//! # catga-nats
//!
//! The NATS transport for Catga (work in progress): remote requests by
//! request/reply on queue groups, events fanned out to every service and shared
//! among its copies, JetStream for at-least-once delivery. Until it lands, the
//! in-memory transport in `catga_core::transport::memory` has the same semantics
//! inside one process.
#![forbid(unsafe_code)]
