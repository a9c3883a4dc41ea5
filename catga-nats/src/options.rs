//! Connection and transport options.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use catga_core::Event;
use serde::Deserialize;

/// How the client proves who it is. In a configuration file:
/// `auth = { token = "..." }`, `{ user_password = ["u", "p"] }`,
/// `{ nkey = "SU..." }` or `{ credentials_file = "/path/x.creds" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(String),
    /// User name and password.
    UserPassword(String, String),
    /// An nkey seed.
    NKey(String),
    /// A `.creds` file (JWT + nkey seed).
    CredentialsFile(PathBuf),
}

/// TLS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// Refuse to connect without TLS.
    pub required: bool,
    /// PEM file with the root certificates to trust (all in one file).
    pub root_certificates: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// JetStream settings for reliable events. Durations in a configuration
/// file are written as `"7days"`, `"200ms"` (humantime).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamOptions {
    /// Stream over `<prefix>.evt.>`; default `<PREFIX>_EVENTS`.
    pub stream: Option<String>,
    /// How long the stream keeps events. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Publish de-duplication window (by message id). Default 2 minutes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Deliveries of one event before it goes to the dead-letter subject. Default 5.
    pub max_deliveries: u32,
    /// Redelivery delay after the first failure; doubles each time up to
    /// `max_backoff`. Default 200 ms.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Cap of the redelivery delay. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long the server waits for an ack before redelivering. Default 30 s.
    /// A handler may run longer: while it runs, its peer tells the server
    /// every third of this time that the message is in progress, so the
    /// message is redelivered only when its peer stops answering (it died,
    /// or lost NATS for longer than this).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Copies of each stream's data on the cluster's nodes. Default `None`:
    /// as many as the cluster has nodes, at most 3 (so a stream survives the
    /// loss of one node of three), 1 on a single server. Streams that exist
    /// keep their setting (`nats stream edit --replicas 3` changes it).
    pub replicas: Option<usize>,
    /// Most bytes each stream keeps (the event stream and the dead-letter
    /// stream apart); past it, the oldest messages are dropped. Default
    /// 256 MiB (JetStream reserves it on each replica: size it to the disks).
    /// Streams that exist keep their setting (`nats stream edit
    /// --max-bytes` changes it).
    pub max_bytes: i64,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            stream: None,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            max_deliveries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            replicas: None,
            max_bytes: 256 << 20,
        }
    }
}

/// Everything [`NatsTransport::connect`](crate::NatsTransport::connect) needs.
///
/// ```
/// use catga_nats::NatsOptions;
/// let options = NatsOptions::new(["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"])
///     .name("orders-1")
///     .token("s3cret")
///     .max_in_flight(512);
/// # drop(options);
/// ```
///
/// Or read from a configuration file with serde (the field names are the
/// method names; durations in humantime, `"2s"`; what is left out keeps its
/// default; an unknown field is an error). Reliable events are declared in
/// code, not here.
///
/// ```
/// # use catga_nats::NatsOptions;
/// let options: NatsOptions = serde_json::from_str(r#"{
///     "urls": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
///     "auth": { "token": "s3cret" },
///     "max_in_flight": 512,
///     "connect_timeout": "2s",
///     "jetstream": { "max_age": "3days", "replicas": 3 }
/// }"#).unwrap();
/// # drop(options);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[must_use]
pub struct NatsOptions {
    pub(crate) urls: Vec<String>,
    pub(crate) name: Option<String>,
    pub(crate) auth: Auth,
    pub(crate) tls: Tls,
    pub(crate) prefix: String,
    pub(crate) max_in_flight: usize,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) peer_max_in_flight: usize,
    pub(crate) peer_max_in_flight_bytes: usize,
    pub(crate) serving_tasks: Option<usize>,
    pub(crate) service_version: String,
    pub(crate) subscription_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) max_reconnect_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// Declared in code (`reliable_event`), not in configuration.
    #[serde(skip)]
    pub(crate) reliable: HashSet<&'static str>,
    pub(crate) jetstream: JetStreamOptions,
}

impl Default for NatsOptions {
    /// A local server, `nats://127.0.0.1:4222`, with every default.
    fn default() -> Self {
        NatsOptions::new(["nats://127.0.0.1:4222"])
    }
}

impl NatsOptions {
    /// Options for a server or a cluster (one URL per node).
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        NatsOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            name: None,
            auth: Auth::None,
            tls: Tls::default(),
            prefix: "catga".to_owned(),
            max_in_flight: 256,
            max_in_flight_bytes: 64 << 20,
            peer_max_in_flight: 1024,
            peer_max_in_flight_bytes: 256 << 20,
            serving_tasks: None,
            service_version: "0.0.0".to_owned(),
            subscription_capacity: 8192,
            max_reconnect_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            reliable: HashSet::new(),
            jetstream: JetStreamOptions::default(),
        }
    }

    /// Connection name shown by the server (monitoring).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticate with user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticate with an nkey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NKey(seed.into());
        self
    }

    /// Authenticate with a credentials file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// TLS settings.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Subject prefix (default `catga`); peers must agree on it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Most messages of one name this peer handles at once (default 256).
    /// A request beyond that is answered at once with a retryable
    /// `overloaded` error (its caller may try another copy); an event waits in
    /// its subscription. Reliable events take at most this many at once too.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Most payload bytes of one name this peer handles at once (default
    /// 64 MiB); as [`NatsOptions::max_in_flight`], in bytes. One message is
    /// always let in when none is in flight, whatever its size.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes.max(1);
        self
    }

    /// Most messages this peer handles at once, all names together (default
    /// 1024); beyond it, requests are answered `overloaded`.
    pub fn peer_max_in_flight(mut self, n: usize) -> Self {
        self.peer_max_in_flight = n.max(1);
        self
    }

    /// Most payload bytes this peer handles at once, all names together
    /// (default 256 MiB).
    pub fn peer_max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.peer_max_in_flight_bytes = bytes.max(1);
        self
    }

    /// Subscriptions (and tasks reading them) per request or core event name.
    /// Default: the runtime's worker threads, so one hot message type uses
    /// every core. The NATS server spreads a name's messages over all
    /// subscriptions of its queue group, this peer's and other copies'.
    pub fn serving_tasks(mut self, n: usize) -> Self {
        self.serving_tasks = Some(n.max(1));
        self
    }

    /// The version this peer reports to the NATS service API (`nats micro
    /// info`), semantic versioning (default `0.0.0`): usually the service's
    /// own, e.g. `env!("CARGO_PKG_VERSION")`.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = version.into();
        self
    }

    /// Messages buffered per subscription before NATS drops them as a slow
    /// consumer (default 8192). Drops are counted and logged. With admission
    /// control, a request subscription's buffer only fills when reading
    /// itself falls behind.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }

    /// Longest wait between reconnect attempts (default 2 s); the wait doubles
    /// from 50 ms up to this, with jitter.
    pub fn max_reconnect_delay(mut self, d: Duration) -> Self {
        self.max_reconnect_delay = d;
        self
    }

    /// Delivers events of type `E` through JetStream: stored, at least once,
    /// redelivered with backoff, dead-lettered after too many failures.
    pub fn reliable_event<E: Event>(mut self) -> Self {
        self.reliable.insert(E::NAME);
        self
    }

    /// JetStream settings for reliable events.
    pub fn jetstream(mut self, options: JetStreamOptions) -> Self {
        self.jetstream = options;
        self
    }

    pub(crate) fn stream_name(&self) -> String {
        self.jetstream.stream.clone().unwrap_or_else(|| {
            let base: String = self
                .prefix
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{base}_EVENTS")
        })
    }

    pub(crate) fn dead_letter_stream_name(&self) -> String {
        format!("{}_DLQ", self.stream_name().trim_end_matches("_EVENTS"))
    }

    pub(crate) fn commands_stream_name(&self) -> String {
        format!(
            "{}_COMMANDS",
            self.stream_name().trim_end_matches("_EVENTS")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_from_configuration_keep_defaults_and_refuse_typos() {
        let o: NatsOptions = serde_json::from_str(
            r#"{"urls": ["nats://a:4222"], "max_in_flight": 7, "connect_timeout": "1500ms",
                "auth": {"user_password": ["u", "p"]},
                "jetstream": {"max_age": "1day", "replicas": 3}}"#,
        )
        .unwrap();
        assert_eq!(o.urls, ["nats://a:4222"]);
        assert_eq!(o.max_in_flight, 7);
        assert_eq!(o.connect_timeout, Duration::from_millis(1500));
        assert!(matches!(o.auth, Auth::UserPassword(ref u, ref p) if u == "u" && p == "p"));
        assert_eq!(o.jetstream.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(o.jetstream.replicas, Some(3));
        // What was left out keeps its default.
        assert_eq!(o.prefix, "catga");
        assert_eq!(o.jetstream.max_deliveries, 5);
        let typo = serde_json::from_str::<NatsOptions>(r#"{"max_inflight": 7}"#).unwrap_err();
        assert!(typo.to_string().contains("max_inflight"), "{typo}");
    }
}
