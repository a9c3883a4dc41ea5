//! # catga-test-support
//!
//! Helpers for Catga's own tests: real `nats-server` and `redis-server`
//! processes on free loopback ports, killed on drop (work in progress; it grows
//! with the NATS and Redis crates).
#![forbid(unsafe_code)]
