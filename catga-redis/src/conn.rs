//! One connection type over a single Redis node or a Redis Cluster.

use std::time::Duration;

use catga_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A cheap-to-clone connection to a node or a cluster; reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) async fn single(url: &str, timeout: Duration) -> Result<Conn> {
    let client = redis::Client::open(url)
        .map_err(|e| config_error(&format!("invalid Redis URL `{url}`"), e))?;
    // Fail fast while Redis is away (a retryable store error), reconnect in the
    // background when it returns.
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .map(Conn::Single)
        .map_err(|e| store_error(&format!("cannot connect to Redis at {url}"), e))
}

pub(crate) async fn cluster(urls: &[String], timeout: Duration) -> Result<Conn> {
    let client = ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .build()
        .map_err(|e| config_error("invalid Redis Cluster URLs", e))?;
    client
        .get_async_connection()
        .await
        .map(Conn::Cluster)
        .map_err(|e| store_error(&format!("cannot connect to Redis Cluster at {urls:?}"), e))
}

/// A store error: retryable, with the Redis error kept as its source.
pub(crate) fn store_error(what: &str, e: RedisError) -> Error {
    let retryable = !matches!(
        e.kind(),
        redis::ErrorKind::Parse
            | redis::ErrorKind::UnexpectedReturnType
            | redis::ErrorKind::InvalidClientConfig
    );
    Error::store(format!("{what}: {e}"))
        .with_retryable(retryable)
        .with_source(e)
}

fn config_error(what: &str, e: RedisError) -> Error {
    Error::new(catga_core::ErrorKind::Config, format!("{what}: {e}")).with_source(e)
}
