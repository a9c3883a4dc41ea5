//! # catga-redis
//!
//! Redis stores for Catga (work in progress): idempotency, transactional outbox
//! and relay, fenced distributed lock, leader-only tasks. They implement the
//! store traits of `catga_core::store`, whose in-memory implementations serve a
//! single peer today.
#![forbid(unsafe_code)]
