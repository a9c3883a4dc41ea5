//! What the parts of the NATS transport share: the connection and its state
//! ([`Shared`]), below the transport itself (`transport.rs`), the serving
//! of core subscriptions (`serve.rs`), JetStream (`jetstream.rs`) and the
//! service API (`discovery.rs`), which all use it and import nothing of each
//! other but `serve::receive_span`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use async_nats::{Client, Subject, jetstream};
use catga_core::Error;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Peer;
use crate::options::NatsOptions;

/// Subjects by message name; foldhash, as SipHash showed in the publish
/// profile (names are our own, not attacker-chosen keys).
pub(crate) type SubjectCache = HashMap<&'static str, Subject, foldhash::fast::RandomState>;

/// What a transport's clones and its serving tasks share: the connection,
/// the options, the admission state and the caches.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) options: NatsOptions,
    pub(crate) streams: OnceCell<()>,
    pub(crate) running: Mutex<Option<Running>>,
    pub(crate) dropped: Arc<AtomicU64>,
    /// What this peer has in flight, and its counters.
    pub(crate) peer: Arc<Peer>,
    /// Request subjects by message name, built once (cloning one is a
    /// reference-count increment).
    pub(crate) request_subjects: RwLock<SubjectCache>,
    /// Event subjects by message name, likewise.
    pub(crate) event_subjects: RwLock<SubjectCache>,
    /// Reliable event subjects by message name, likewise.
    pub(crate) reliable_subjects: RwLock<SubjectCache>,
}

/// The tasks of a started peer.
pub(crate) struct Running {
    pub(crate) shutdown: CancellationToken,
    pub(crate) loops: TaskTracker,
    pub(crate) work: TaskTracker,
}

impl Shared {
    pub(crate) fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// Whether event `name` goes through JetStream: its type says so
    /// (`declared`, from `Event::RELIABLE`), or the options name it.
    pub(crate) fn is_reliable(&self, name: &str, declared: bool) -> bool {
        declared || (!self.options.reliable.is_empty() && self.options.reliable.contains(name))
    }
}

/// A transport error with this text (retryable).
pub(crate) fn transport_error(what: impl std::fmt::Display) -> Error {
    Error::transport(what.to_string())
}
