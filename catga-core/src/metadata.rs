//! Metadata carried by every dispatch: ids, deadline and free headers.
//!
//! Ids are UUID v7 (time-ordered, unique across peers with no coordination). A
//! message id is generated lazily the first time something asks for it, so an
//! in-process dispatch that never looks at it pays nothing; once read it is fixed
//! for the whole dispatch.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// Free-form string headers; names are compared ASCII case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self
            .entries
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(slot) => slot.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name`; returns its value if it was set.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(self.entries.remove(i).1)
    }

    /// Every header in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Marks an outbox record of an event type declared reliable
/// ([`Event::RELIABLE`](crate::Event::RELIABLE)); the relay reads it off the
/// record and does not send it on.
pub const RELIABLE_HEADER: &str = "Catga-Reliable";

/// Marks an outbox record of a command sent durably
/// ([`Context::send_durable`](crate::Context::send_durable)); the relay reads
/// it off the record and sends the command durably.
pub const DURABLE_HEADER: &str = "Catga-Durable";

/// The header that carries a leader's fence: `<token>:<lock name>`.
pub const FENCE_HEADER: &str = "Catga-Fence";

/// A leader's fencing token as it travels with what the leader sends.
///
/// Messages sent through a [`LeaderContext`](crate::runtime::leader::LeaderContext) (and
/// a saga coordinator's commands) carry the fence of the leader's term in the
/// `Catga-Fence` header. A peer that receives one checks it against the lock
/// store before running any handler and refuses it (kind
/// [`Conflict`](crate::ErrorKind::Conflict), code `catga.stale_fence`) when a
/// newer term has begun. Handlers read it with
/// [`Context::fence`](crate::Context::fence), to pass to their own stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Name of the leader lock (the leader task's name).
    pub name: String,
    /// The term's fencing token: greater than every earlier term's.
    pub token: u64,
}

impl Fence {
    /// The header value: `<token>:<name>`.
    pub fn header_value(&self) -> String {
        format!("{}:{}", self.token, self.name)
    }

    /// Parses a `Catga-Fence` header value.
    pub fn from_header(value: &str) -> crate::Result<Fence> {
        value
            .split_once(':')
            .and_then(|(token, name)| {
                let token = token.trim().parse().ok()?;
                (!name.is_empty()).then(|| Fence {
                    name: name.to_owned(),
                    token,
                })
            })
            .ok_or_else(|| {
                crate::Error::codec(format!(
                    "header `{FENCE_HEADER}` is `{value}`, not `<token>:<lock name>`"
                ))
                .with_retryable(false)
            })
    }
}

/// Ids, deadline and headers of one dispatch.
///
/// Pass one to [`Mediator::send_with`](crate::Mediator::send_with) or
/// [`Mediator::publish_with`](crate::Mediator::publish_with) to set them per call:
///
/// ```
/// use std::time::Duration;
/// use catga_core::Metadata;
///
/// let meta = Metadata::new()
///     .with_message_id(catga_core::new_id())
///     .with_timeout(Duration::from_secs(2))
///     .with_header("tenant", "acme");
/// assert_eq!(meta.headers().get("tenant"), Some("acme"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    message_id: OnceLock<Uuid>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    deadline: Option<Instant>,
    headers: Headers,
}

/// A new UUID v7, the id format Catga uses everywhere: 48 bits of Unix time in
/// milliseconds, then 74 random bits. Ids sort by creation time to the
/// millisecond (not within one). The random bits come from a per-thread
/// generator seeded once from the OS: ids must be unique, not unguessable, and
/// asking the kernel for every id costs a system call per message.
pub fn new_id() -> Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    crate::rng::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

impl Metadata {
    /// Empty metadata: ids are generated when first needed, no deadline.
    pub fn new() -> Self {
        Metadata::default()
    }

    /// Uses `id` as the message id (a retry of the same logical message should
    /// reuse its id, so idempotency can recognise it).
    #[must_use]
    pub fn with_message_id(self, id: Uuid) -> Self {
        Metadata {
            message_id: OnceLock::from(id),
            ..self
        }
    }

    /// Sets the correlation id (the conversation this message belongs to).
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id (the message that caused this one).
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets an absolute deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the deadline to `timeout` from now.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Instant::now() + timeout)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The message id, generated (UUID v7) on first call and fixed afterwards.
    pub fn message_id(&self) -> Uuid {
        *self.message_id.get_or_init(new_id)
    }

    /// The message id if it was set or already generated.
    pub fn message_id_if_set(&self) -> Option<Uuid> {
        self.message_id.get().copied()
    }

    /// The correlation id; a message that starts a conversation correlates to itself.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id.unwrap_or_else(|| self.message_id())
    }

    /// The id of the message that caused this one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Headers, mutable.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Sets the leader fence this message carries (see [`Fence`]).
    #[must_use]
    pub fn with_fence(self, fence: &Fence) -> Self {
        self.with_header(FENCE_HEADER, fence.header_value())
    }

    /// The leader fence this message carries, if any (a malformed header reads
    /// as none here; dispatch refuses it with an error).
    pub fn fence(&self) -> Option<Fence> {
        self.headers
            .get(FENCE_HEADER)
            .and_then(|v| Fence::from_header(v).ok())
    }

    /// Metadata for a message caused by this one: same correlation, causation set
    /// to this message, same deadline and headers (but not a leader's fence,
    /// which belongs to what the leader itself sends), a fresh message id.
    pub fn child(&self) -> Metadata {
        let mut headers = self.headers.clone();
        headers.remove(FENCE_HEADER);
        Metadata {
            message_id: OnceLock::new(),
            correlation_id: Some(self.correlation_id()),
            causation_id: Some(self.message_id()),
            deadline: self.deadline,
            headers,
        }
    }

    /// The same metadata without a deadline.
    pub(crate) fn without_deadline(mut self) -> Metadata {
        self.deadline = None;
        self
    }

    /// Merges per-call options into child metadata: values set in `overrides` win.
    pub(crate) fn overridden_by(mut self, overrides: Metadata) -> Metadata {
        if let Some(id) = overrides.message_id.get() {
            self.message_id = OnceLock::from(*id);
        }
        if overrides.correlation_id.is_some() {
            self.correlation_id = overrides.correlation_id;
        }
        if overrides.causation_id.is_some() {
            self.causation_id = overrides.causation_id;
        }
        if let Some(d) = overrides.deadline {
            self.deadline = Some(self.deadline.map_or(d, |mine| mine.min(d)));
        }
        for (n, v) in overrides.headers.iter() {
            self.headers.insert(n, v);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_lazy_but_stable() {
        let m = Metadata::new();
        assert!(m.message_id_if_set().is_none());
        let id = m.message_id();
        assert_eq!(m.message_id(), id);
        assert_eq!(m.correlation_id(), id);
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn child_propagates_correlation_and_sets_causation() {
        let root = Metadata::new().with_header("tenant", "a");
        let child = root.child();
        assert_eq!(child.correlation_id(), root.message_id());
        assert_eq!(child.causation_id(), Some(root.message_id()));
        assert_ne!(child.message_id(), root.message_id());
        assert_eq!(child.headers().get("TENANT"), Some("a"));
    }

    #[test]
    fn overrides_keep_the_earlier_deadline() {
        let soon = Instant::now() + Duration::from_secs(1);
        let late = soon + Duration::from_secs(10);
        let merged = Metadata::new()
            .with_deadline(soon)
            .overridden_by(Metadata::new().with_deadline(late));
        assert_eq!(merged.deadline(), Some(soon));
    }
}
