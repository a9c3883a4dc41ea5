//! Configuration from the environment.
//!
//! | variable | meaning | default |
//! |----------|---------|---------|
//! | `CATGA_NATS_URL` | NATS URLs, comma-separated: join a cluster | unset: in memory |
//! | `CATGA_REDIS_URL` | Redis URL for stores, idempotency, outbox, locks, sagas | unset: in memory |
//! | `CATGA_HTTP_ADDR` | where this service serves HTTP | per service |
//! | `CATGA_SEED_STOCK` | `sku=qty,...` stock set at start when missing | `book=1000,pen=1000` |
//! | `CATGA_HTTP_CONCURRENCY` | HTTP requests in flight per copy: a number, `adaptive` or `adaptive:MAX`; past it, 503 | `256` |
//! | `CATGA_SHUTDOWN_GRACE_SECS` | how long a stopping copy finishes what is in flight | `30` |
//! | `RUST_LOG` | log filter | `info` |

use std::net::SocketAddr;

use catga::{Error, ErrorKind, Result};

/// What a service process was told to be.
#[derive(Debug, Clone)]
pub struct Config {
    /// Service name (queue group of its events).
    pub service: String,
    /// NATS URLs; `None` runs without a transport.
    pub nats: Option<Vec<String>>,
    /// Redis URL; `None` keeps everything in memory.
    pub redis: Option<String>,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// HTTP requests handled at once before more are shed with 503
    /// (`CATGA_HTTP_CONCURRENCY`: a number, or `adaptive` / `adaptive:MAX`;
    /// default 256).
    pub http_limit: HttpLimit,
    /// How long a stopping process waits for HTTP requests, leader tasks and
    /// the NATS drain, whatever the state of the servers
    /// (`CATGA_SHUTDOWN_GRACE_SECS`, default 30); then it exits non-zero.
    pub shutdown_grace: std::time::Duration,
    /// Stock to seed.
    pub seed_stock: Vec<(String, u64)>,
}

/// How many HTTP requests a copy handles at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpLimit {
    /// This many (`CATGA_HTTP_CONCURRENCY=32`).
    Fixed(usize),
    /// A limit that follows latency, up to `max` (`adaptive:64`; `adaptive`
    /// alone is up to 256): see `catga_axum::AdaptiveLimit`.
    Adaptive {
        /// The most it grows to.
        max: usize,
    },
}

impl HttpLimit {
    /// Reads `32`, `adaptive` or `adaptive:64`.
    pub fn parse(v: &str) -> Result<HttpLimit> {
        let v = v.trim();
        let number = |n: &str| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    config_error(format!(
                        "CATGA_HTTP_CONCURRENCY `{v}` is not a positive number, `adaptive` or `adaptive:MAX`"
                    ))
                })
        };
        match v.strip_prefix("adaptive") {
            Some("") => Ok(HttpLimit::Adaptive { max: 256 }),
            Some(rest) => match rest.strip_prefix(':') {
                Some(max) => Ok(HttpLimit::Adaptive { max: number(max)? }),
                None => number(v).map(HttpLimit::Fixed),
            },
            None => number(v).map(HttpLimit::Fixed),
        }
    }
}

fn config_error(what: String) -> Error {
    Error::new(ErrorKind::Config, what)
}

impl Config {
    /// Reads the environment; `default_http` when `CATGA_HTTP_ADDR` is unset.
    pub fn from_env(service: &str, default_http: &str) -> Result<Config> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let nats = var("CATGA_NATS_URL").map(|v| {
            v.split(',')
                .map(|u| u.trim().to_owned())
                .collect::<Vec<_>>()
        });
        let http = var("CATGA_HTTP_ADDR")
            .unwrap_or_else(|| default_http.to_owned())
            .parse()
            .map_err(|e| config_error(format!("CATGA_HTTP_ADDR is not host:port: {e}")))?;
        let seed = var("CATGA_SEED_STOCK").unwrap_or_else(|| "book=1000,pen=1000".to_owned());
        let seed_stock =
            seed.split(',')
                .map(|pair| {
                    let (sku, qty) = pair.split_once('=').ok_or_else(|| {
                        config_error(format!("CATGA_SEED_STOCK entry `{pair}` is not sku=qty"))
                    })?;
                    let qty = qty.trim().parse().map_err(|e| {
                        config_error(format!("CATGA_SEED_STOCK quantity `{qty}`: {e}"))
                    })?;
                    Ok((sku.trim().to_owned(), qty))
                })
                .collect::<Result<Vec<_>>>()?;
        let http_limit = match var("CATGA_HTTP_CONCURRENCY") {
            None => HttpLimit::Fixed(256),
            Some(v) => HttpLimit::parse(&v)?,
        };
        let shutdown_grace = match var("CATGA_SHUTDOWN_GRACE_SECS") {
            None => std::time::Duration::from_secs(30),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(std::time::Duration::from_secs_f64)
                .ok_or_else(|| {
                    config_error(format!("CATGA_SHUTDOWN_GRACE_SECS `{v}` is not seconds"))
                })?,
        };
        Ok(Config {
            service: service.to_owned(),
            shutdown_grace,
            nats,
            redis: var("CATGA_REDIS_URL"),
            http,
            http_limit,
            seed_stock,
        })
    }

    /// Whether this process joins a cluster (NATS and Redis both configured).
    pub fn is_cluster(&self) -> bool {
        self.nats.is_some() && self.redis.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::HttpLimit;

    #[test]
    fn http_limits_parse() {
        assert_eq!(HttpLimit::parse("32").unwrap(), HttpLimit::Fixed(32));
        assert_eq!(
            HttpLimit::parse(" adaptive ").unwrap(),
            HttpLimit::Adaptive { max: 256 }
        );
        assert_eq!(
            HttpLimit::parse("adaptive:64").unwrap(),
            HttpLimit::Adaptive { max: 64 }
        );
        for bad in [
            "0",
            "-1",
            "lots",
            "adaptive:",
            "adaptive:0",
            "adaptivex",
            "adaptive:x",
        ] {
            let e = HttpLimit::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("CATGA_HTTP_CONCURRENCY"),
                "{bad}: {e}"
            );
        }
    }
}
