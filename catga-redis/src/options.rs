//! [`RedisOptions`]: where and how the Redis stores connect.

use std::time::Duration;

use serde::Deserialize;

/// Where and how to connect.
///
/// ```
/// use std::time::Duration;
/// use catga_redis::RedisOptions;
///
/// let single = RedisOptions::new("redis://127.0.0.1:6379/");
/// let cluster = RedisOptions::cluster(["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])
///     .prefix("shop")
///     .timeout(Duration::from_secs(1));
/// # drop((single, cluster));
/// ```
///
/// Or read from a configuration file with serde (field names as the
/// methods; durations in humantime, `"2s"`; an unknown field is an error):
///
/// ```
/// # use catga_redis::RedisOptions;
/// let options: RedisOptions = serde_json::from_str(r#"{
///     "urls": ["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"],
///     "cluster": true,
///     "prefix": "shop",
///     "timeout": "1s",
///     "tls": { "root_certificates": "/etc/ssl/redis-ca.pem" }
/// }"#).unwrap();
/// # drop(options);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[must_use]
pub struct RedisOptions {
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) prefix: String,
    pub(crate) outbox_shards: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) saga_retention: Duration,
    pub(crate) dead_letters_max: usize,
    pub(crate) tls: Tls,
}

/// TLS settings for `rediss://` URLs (with the `tls` feature).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Tls {
    /// PEM file of the certificates to trust instead of the system's.
    pub(crate) root_certificates: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub(crate) client_certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for RedisOptions {
    /// A local node, `redis://127.0.0.1:6379/`, with every default.
    fn default() -> Self {
        RedisOptions::new("redis://127.0.0.1:6379/")
    }
}

impl RedisOptions {
    /// One Redis node.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            urls: vec![url.into()],
            cluster: false,
            prefix: "catga".to_owned(),
            outbox_shards: 8,
            timeout: Duration::from_secs(2),
            saga_retention: Duration::from_secs(7 * 24 * 3600),
            dead_letters_max: 100_000,
            tls: Tls::default(),
        }
    }

    /// A Redis Cluster, given some of its nodes.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisOptions::new("")
        }
    }

    /// Key prefix (default `catga`); peers of one deployment must agree on it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Number of outbox streams (default 8). Idempotency keys and outbox entries
    /// spread over them, and so over a cluster's nodes. Peers must agree on it.
    pub fn outbox_shards(mut self, shards: u32) -> Self {
        self.outbox_shards = shards.max(1);
        self
    }

    /// Trusts the certificates in this PEM file for `rediss://` URLs, instead
    /// of the system's (a private CA). Needs the `tls` feature.
    pub fn tls_root_certificates(mut self, pem: impl Into<std::path::PathBuf>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to a Redis that
    /// verifies clients (`tls-auth-clients yes`). Needs the `tls` feature.
    pub fn tls_client_certificate(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// About how many entries each outbox shard's dead-letter stream keeps
    /// (default 100,000); older ones are trimmed as new ones arrive, so a
    /// poison flood cannot fill Redis.
    pub fn dead_letters_max(mut self, entries: usize) -> Self {
        self.dead_letters_max = entries.max(1);
        self
    }

    /// How long a finished saga's state is kept for reading (default 7 days);
    /// then it expires.
    pub fn saga_retention(mut self, retention: Duration) -> Self {
        self.saga_retention = retention;
        self
    }

    /// Connect and response timeout (default 2 s): past it, an operation fails
    /// with a retryable store error instead of waiting for Redis.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_from_configuration_keep_defaults_and_refuse_typos() {
        let o: RedisOptions = serde_json::from_str(
            r#"{"urls": ["redis://a:7000/"], "cluster": true, "timeout": "750ms",
                "saga_retention": "2days"}"#,
        )
        .unwrap();
        assert_eq!(o.urls, ["redis://a:7000/"]);
        assert!(o.cluster);
        assert_eq!(o.timeout, Duration::from_millis(750));
        assert_eq!(o.saga_retention, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(o.prefix, "catga");
        assert_eq!(o.outbox_shards, 8);
        let typo = serde_json::from_str::<RedisOptions>(r#"{"time_out": "1s"}"#).unwrap_err();
        assert!(typo.to_string().contains("time_out"), "{typo}");
    }
}
