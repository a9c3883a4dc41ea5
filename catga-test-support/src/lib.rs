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
//! Faults, not only crashes: [`FaultProxy`] sits between a peer and Redis or
//! NATS and delays, stalls or cuts the connection; [`RedisServer::pause`] and
//! [`NatsServer::pause`] stop a server process (SIGSTOP) until resumed.
//!
//! [`bench`](mod@bench) has the load driver the benchmark binaries share.
#![forbid(unsafe_code)]

pub mod bench;
mod nats;
mod process;
mod proxy;
mod redis;
mod tls;

pub use nats::{NatsCluster, NatsServer};
pub use process::{http_get, signal};
pub use proxy::{Fault, FaultProxy};
pub use redis::{RedisCluster, RedisServer, command_calls};
pub use tls::TestCa;

/// Waits until `check` holds, polling every few milliseconds; panics naming
/// `what` when it does not hold within `within`. Tests wait for conditions with
/// this instead of sleeping a fixed time.
pub async fn eventually(what: &str, within: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
