//! What the sample shop services share: the message contracts between them
//! ([`messages`]), their stores ([`store`], in memory or Redis), configuration
//! from the environment ([`config`]), operations ([`ops`]: logs, metrics,
//! health, shutdown) and the wiring of a service process ([`runtime`]).

pub mod config;
pub mod messages;
pub mod ops;
pub mod runtime;
pub mod store;

pub use config::Config;
pub use runtime::Infra;
