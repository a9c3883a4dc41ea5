//! # catga-macros
//!
//! Derive and attribute macros for Catga messages and handlers (work in
//! progress): `#[derive(Request)]`, `#[derive(Event)]` and `#[handler]` with
//! automatic registration through `inventory`.
#![forbid(unsafe_code)]
