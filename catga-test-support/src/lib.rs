//! # catga-test-support
//!
//! Real servers for Catga's own tests, never mocks: [`NatsServer`] (JetStream on),
//! [`NatsCluster`] (three nodes with routes), [`RedisServer`] (optionally with
//! AOF) and [`RedisCluster`] (three masters). Each starts the real binary on free
//! loopback ports (127.0.0.1 only) in its own temporary directory and kills it on
//! drop.
//!
//! The binaries are found on `PATH` (`nats-server`, `redis-server`). When one is
//! missing the constructor panics with an install hint; `scripts/test.sh`
//! installs both.
//!
//! [`bench`](mod@bench) has the load driver the benchmark binaries share.
#![forbid(unsafe_code)]

pub mod bench;
mod nats;
mod process;
mod redis;

pub use nats::{NatsCluster, NatsServer};
pub use redis::{RedisCluster, RedisServer};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
