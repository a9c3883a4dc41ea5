//! One error type for every failure a dispatch can meet.
//!
//! [`Error`] is opaque: ask it what happened with [`Error::kind`] (a `Copy`,
//! non-exhaustive [`ErrorKind`]) and whether trying again may help with
//! [`Error::is_retryable`]. Handler errors carry an application [`code`](Error::code)
//! that survives the trip across a transport, so a caller on another peer can match
//! on it.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Result alias used throughout Catga.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form that code can match on.
///
/// New kinds may be added in minor releases; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No handler for the message here, and no peer reachable through a transport.
    NoHandler,
    /// Two handlers were registered for one request type (a build error).
    DuplicateHandler,
    /// The handler returned an error (see [`Error::code`]) or panicked.
    Handler,
    /// The message failed validation; the handler never saw it.
    Validation,
    /// The deadline passed before a response arrived.
    Timeout,
    /// The transport could not carry the message (connection lost, no reply, …).
    Transport,
    /// A store (idempotency, outbox, lock) failed or is unreachable.
    Store,
    /// A payload could not be encoded or decoded.
    Codec,
    /// The work was cancelled (shutdown, lease lost).
    Cancelled,
    /// A concurrency limit or bounded queue refused the message.
    Overloaded,
    /// A duplicate of this message is still being handled elsewhere.
    InProgress,
    /// The builder or a component was configured in a way that cannot work.
    Config,
    /// Stored state changed since it was read (optimistic versioning), or a
    /// newer owner (higher fencing token) wrote it.
    Conflict,
}

impl ErrorKind {
    /// Stable wire name of the kind, used in reply headers and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoHandler => "no_handler",
            ErrorKind::DuplicateHandler => "duplicate_handler",
            ErrorKind::Handler => "handler",
            ErrorKind::Validation => "validation",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::Store => "store",
            ErrorKind::Codec => "codec",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::InProgress => "in_progress",
            ErrorKind::Config => "config",
            ErrorKind::Conflict => "conflict",
        }
    }

    /// Parses a wire name produced by [`ErrorKind::as_str`].
    pub fn from_wire(s: &str) -> Option<Self> {
        const ALL: [ErrorKind; 13] = [
            ErrorKind::NoHandler,
            ErrorKind::DuplicateHandler,
            ErrorKind::Handler,
            ErrorKind::Validation,
            ErrorKind::Timeout,
            ErrorKind::Transport,
            ErrorKind::Store,
            ErrorKind::Codec,
            ErrorKind::Cancelled,
            ErrorKind::Overloaded,
            ErrorKind::InProgress,
            ErrorKind::Config,
            ErrorKind::Conflict,
        ];
        ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether errors of this kind are worth retrying when nothing else is known.
    pub const fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Transport
                | ErrorKind::Store
                | ErrorKind::Overloaded
                | ErrorKind::InProgress
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every Catga operation.
///
/// It is one pointer wide, so `Result<()>` stays small on the hot path.
#[derive(Clone)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    message_name: Option<Cow<'static, str>>,
    code: Option<Cow<'static, str>>,
    retryable: Option<bool>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    related: Vec<Error>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                message_name: None,
                code: None,
                retryable: None,
                source: None,
                related: Vec::new(),
            }),
        }
    }

    /// An application error from a handler, with a machine-readable `code`
    /// (for example `"orders.out_of_stock"`) that crosses transports intact.
    pub fn handler(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let mut e = Error::new(ErrorKind::Handler, message);
        e.inner.code = Some(code.into());
        e
    }

    /// A validation failure: the message is wrong and retrying will not help.
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Validation, message)
    }

    /// A failure of a store backend (retryable by default).
    pub fn store(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Store, message)
    }

    /// A failure to reach or use the transport (retryable by default).
    pub fn transport(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Transport, message)
    }

    /// A payload that could not be encoded or decoded.
    pub fn codec(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Codec, message)
    }

    pub(crate) fn no_handler(name: &'static str, kind: &str) -> Self {
        Error::new(
            ErrorKind::NoHandler,
            format!(
                "no handler for {kind} `{name}`: register one on the builder \
                 (e.g. `.request_handler(..)`) or configure a transport so a peer can handle it"
            ),
        )
        .with_message_name(name)
    }

    /// A timeout of message `name` after waiting `waited`.
    pub fn timeout(name: &str, waited: Duration) -> Self {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "`{name}` got no response within {}ms; the handler may be slow or the peer \
                 busy: raise the timeout or add capacity",
                waited.as_micros().div_ceil(1000)
            ),
        )
        .with_message_name(name.to_owned())
    }

    /// A message that reached a peer after its deadline and was not handled
    /// (kind `timeout`, code `catga.expired`): its caller has stopped waiting.
    pub fn expired(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        Error::new(
            ErrorKind::Timeout,
            format!(
                "`{name}` arrived after its deadline (its caller has stopped waiting); it was \
                 not handled"
            ),
        )
        .with_code("catga.expired")
        .with_message_name(name)
    }

    /// Sets the application code (kept across transports).
    #[must_use]
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.inner.code = Some(code.into());
        self
    }

    /// Records the wire name of the message this error is about.
    #[must_use]
    pub fn with_message_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.inner.message_name = Some(name.into());
        self
    }

    /// Overrides whether the error is retryable.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = Some(retryable);
        self
    }

    /// Keeps the underlying cause, reachable through [`std::error::Error::source`].
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Arc::new(source));
        self
    }

    pub(crate) fn with_related(mut self, related: Vec<Error>) -> Self {
        self.inner.related = related;
        self
    }

    /// Folds the failures of one event's handlers into one result: `Ok` when
    /// there are none, the failure itself when there is one, otherwise the first
    /// failure's kind and code with every failure in [`Error::related`].
    pub(crate) fn combine(event: &'static str, mut failures: Vec<Error>) -> Result<()> {
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            n => {
                let first = &failures[0];
                let mut combined = Error::new(
                    first.kind(),
                    format!(
                        "{n} handlers of event `{event}` failed; first: {}",
                        first.message()
                    ),
                )
                .with_message_name(event)
                .with_retryable(first.is_retryable());
                combined.inner.code = first.inner.code.clone();
                Err(combined.with_related(failures))
            }
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The application code of a handler error, if any.
    pub fn code(&self) -> Option<&str> {
        self.inner.code.as_deref()
    }

    /// The human-readable message, without kind or message name.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The wire name of the message this error is about, when known.
    pub fn message_name(&self) -> Option<&str> {
        self.inner.message_name.as_deref()
    }

    /// Every individual failure when this error stands for several
    /// (see [`Mediator::publish`](crate::Mediator::publish)); empty otherwise.
    pub fn related(&self) -> &[Error] {
        &self.inner.related
    }

    /// Whether trying the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner
            .retryable
            .unwrap_or_else(|| self.inner.kind.is_retryable_by_default())
    }

    /// Shorthand for `kind() == ErrorKind::Timeout`.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// Shorthand for `kind() == ErrorKind::NoHandler`.
    pub fn is_no_handler(&self) -> bool {
        self.inner.kind == ErrorKind::NoHandler
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.kind)?;
        if let Some(code) = &self.inner.code {
            write!(f, " [{code}]")?;
        }
        if let Some(name) = &self.inner.message_name {
            write!(f, " on `{name}`")?;
        }
        write!(f, ": {}", self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(name) = &self.inner.message_name {
            d.field("message_name", name);
        }
        if let Some(code) = &self.inner.code {
            d.field("code", code);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        if !self.inner.related.is_empty() {
            d.field("related", &self.inner.related);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The text of a caught panic (`catch_unwind`'s payload): its message when it
/// is a string, as `panic!` makes it, a placeholder otherwise.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Turns another library's error into an [`Error`] with what was being done,
/// the way `anyhow::Context` does: `.store_context("reading the order")?`
/// instead of a `map_err` helper per library.
///
/// The message is `"<what>: <error>"`, the original error is kept as the
/// [`source`](StdError::source), and the kind says whether a retry may help.
///
/// ```
/// use catga_core::{ErrorKind, ResultExt};
///
/// fn parse(s: &str) -> catga_core::Result<u32> {
///     s.parse::<u32>().context(ErrorKind::Validation, "reading the quantity")
/// }
/// let e = parse("ten").unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Validation);
/// assert!(e.message().starts_with("reading the quantity: "));
/// ```
pub trait ResultExt<T> {
    /// An error of `kind` saying `what` failed.
    fn context(self, kind: ErrorKind, what: impl fmt::Display) -> Result<T>;

    /// A store (database, cache) failed while doing `what`: kind
    /// [`ErrorKind::Store`], retryable.
    fn store_context(self, what: impl fmt::Display) -> Result<T>;

    /// A transport or remote service failed while doing `what`: kind
    /// [`ErrorKind::Transport`], retryable.
    fn transport_context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: StdError + Send + Sync + 'static> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, kind: ErrorKind, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::new(kind, format!("{what}: {e}")).with_source(e))
    }

    fn store_context(self, what: impl fmt::Display) -> Result<T> {
        self.context(ErrorKind::Store, what)
    }

    fn transport_context(self, what: impl fmt::Display) -> Result<T> {
        self.context(ErrorKind::Transport, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_code_and_message() {
        let e = Error::handler("orders.out_of_stock", "only 2 left")
            .with_message_name("orders.CreateOrder");
        assert_eq!(
            e.to_string(),
            "handler [orders.out_of_stock] on `orders.CreateOrder`: only 2 left"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_defaults_follow_kind_and_can_be_overridden() {
        assert!(Error::transport("down").is_retryable());
        assert!(!Error::validation("bad").is_retryable());
        assert!(Error::handler("x", "y").with_retryable(true).is_retryable());
        assert!(!Error::store("s").with_retryable(false).is_retryable());
    }

    #[test]
    fn wire_names_round_trip() {
        for k in [
            ErrorKind::NoHandler,
            ErrorKind::Handler,
            ErrorKind::Timeout,
            ErrorKind::InProgress,
            ErrorKind::Config,
        ] {
            assert_eq!(ErrorKind::from_wire(k.as_str()), Some(k));
        }
        assert_eq!(ErrorKind::from_wire("nonsense"), None);
    }

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
