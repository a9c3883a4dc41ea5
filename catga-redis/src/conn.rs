//! One connection type over a single Redis node or a Redis Cluster.

use std::time::Duration;

use catga_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::options::Tls;

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

/// The TLS certificates `tls` names, read from their files (`None`: the
/// system's trust store, no client certificate).
#[cfg(feature = "tls")]
fn certificates(tls: &Tls) -> Result<Option<redis::TlsCertificates>> {
    if tls.root_certificates.is_none() && tls.client_certificate.is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::new(
                catga_core::ErrorKind::Config,
                format!("cannot read TLS file {}: {e}", path.display()),
            )
        })
    };
    let root_cert = tls.root_certificates.as_deref().map(read).transpose()?;
    let client_tls = match &tls.client_certificate {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Without the `tls` feature: TLS settings and `rediss://` are configuration
/// errors that say how to get TLS.
#[cfg(not(feature = "tls"))]
fn no_tls(urls: &[String], tls: &Tls) -> Result<()> {
    let wants = tls.root_certificates.is_some()
        || tls.client_certificate.is_some()
        || urls.iter().any(|u| u.starts_with("rediss://"));
    if wants {
        return Err(Error::new(
            catga_core::ErrorKind::Config,
            "TLS to Redis needs catga-redis's `tls` feature (catga: `redis-tls`)",
        ));
    }
    Ok(())
}

pub(crate) async fn single(url: &str, timeout: Duration, tls: &Tls) -> Result<Conn> {
    #[cfg(not(feature = "tls"))]
    no_tls(&[url.to_owned()], tls)?;
    #[cfg(feature = "tls")]
    let client = match certificates(tls)? {
        Some(certs) => redis::Client::build_with_tls(url, certs),
        None => redis::Client::open(url),
    };
    #[cfg(not(feature = "tls"))]
    let client = redis::Client::open(url);
    let client = client.map_err(|e| config_error(&format!("invalid Redis URL `{url}`"), e))?;
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

pub(crate) async fn cluster(urls: &[String], timeout: Duration, tls: &Tls) -> Result<Conn> {
    #[cfg(not(feature = "tls"))]
    no_tls(urls, tls)?;
    let builder = ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3);
    #[cfg(feature = "tls")]
    let builder = match certificates(tls)? {
        Some(certs) => builder.certs(certs),
        None => builder,
    };
    let client = builder
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
