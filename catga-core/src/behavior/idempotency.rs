//! Idempotency: a message id is handled once; duplicates get the stored response.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Behavior, Envelope, Next, Reply};
use crate::codec::Format;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Claim, IdempotencyStore};

/// Runs the handler once per (scope, message id) and replays the stored response
/// to duplicates.
///
/// - First attempt: claims the key as in-progress for `lease`, runs the rest of
///   the pipeline, and on success stores the encoded response for `retention`.
/// - A failed attempt releases its claim: the next duplicate runs the handler
///   (unless [`store_failures`](Idempotency::store_failures) keeps non-retryable
///   failures). So does an attempt dropped while its handler runs (a deadline
///   ran out): the release runs in the background, and a retry need not wait
///   for the lease to run out. (An attempt dropped while its claim is being
///   taken, or while its outcome is being stored, leaves the claim to its
///   lease.)
/// - A duplicate that finds the key in progress polls until it completes or
///   `wait` passes, then fails with [`ErrorKind::InProgress`] (retryable).
///
/// The scope defaults to the message name and handler type, so each handler of
/// an event is idempotent on its own. Add it once per message type: two
/// idempotency behaviors with the same scope around one handler would make the
/// inner one wait for the outer one's claim.
///
/// **Outbox.** When the mediator runs an outbox relay (`.outbox(store)` on the
/// builder, with the same store), events the handler publishes through its
/// context are held back and written with the response in one atomic step, so
/// they are published if and only if the handler's result is stored: none on
/// failure, none lost on a crash after success.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    lease: Duration,
    retention: Duration,
    wait: Duration,
    poll: Duration,
    scope: Option<Arc<str>>,
    store_failures: bool,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("wait", &self.wait)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Idempotency backed by `store`: 30 s lease, 24 h retention, 5 s wait.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Idempotency::shared(Arc::new(store))
    }

    /// Like [`Idempotency::new`] for a store already shared.
    pub fn shared(store: Arc<dyn IdempotencyStore>) -> Self {
        Idempotency {
            store,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            wait: Duration::from_secs(5),
            poll: Duration::from_millis(20),
            scope: None,
            store_failures: false,
        }
    }

    /// How long a claim protects a running attempt (it must outlast the handler).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a completed response is kept for duplicates.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a duplicate waits for an attempt in progress.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Also stores non-retryable failures (validation, business rule errors), so
    /// a duplicate gets the same error without running the handler. Retryable
    /// failures are never stored: the next attempt runs again.
    #[must_use]
    pub fn store_failures(mut self, store: bool) -> Self {
        self.store_failures = store;
        self
    }

    /// A fixed scope instead of message name + handler type.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    fn key(&self, env: &Envelope<'_>) -> String {
        let id = env.context().message_id();
        match &self.scope {
            Some(scope) => format!("{scope}:{id}"),
            None => format!("{}/{}:{id}", env.name(), env.handler_name()),
        }
    }
}

/// A claim this attempt holds. Dropped while the handler runs (the attempt's
/// future was dropped, or the handler panicked through it), it releases the
/// claim in the background; the release compares the token, so it cannot free
/// a later holder's claim or undo a stored outcome.
struct HeldClaim {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    token: String,
    finished: bool,
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Outside a runtime, or while the runtime shuts down (it drops the
        // spawned task), the claim is left to its lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let (key, token) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        let release = async move {
            match store.release(&key, &token).await {
                Ok(()) => tracing::debug!(key, "released the claim of a dropped attempt"),
                Err(e) => tracing::warn!(
                    key,
                    error = %e,
                    "could not release the claim of a dropped attempt; it expires with its lease"
                ),
            }
        };
        runtime.spawn(tracing::Instrument::in_current_span(release));
    }
}

/// Tag of a stored outcome: the first byte of the stored value.
const OK: u8 = 0;
const FAILED: u8 = 1;

/// A stored failure: what a duplicate gets back instead of running again.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredError {
    kind: String,
    code: Option<String>,
    message: String,
}

impl Idempotency {
    /// Runs the handler as the attempt holding the claim, and stores its outcome.
    async fn attempt<'a>(
        &'a self,
        env: Envelope<'a>,
        next: Next<'a>,
        mut claim: HeldClaim,
    ) -> Result<Reply> {
        let (key, token) = (claim.key.as_str(), claim.token.as_str());
        let ctx = env.context();
        // Hold back published events only when a relay will move them.
        let held = if ctx.mediator().has_outbox() {
            ctx.hold_events()
        } else {
            None
        };
        let result = next.run(env).await;
        // From here on the outcome is stored or the claim released below; a
        // drop now leaves the claim to its lease, as an unstored success must
        // not run again at once.
        claim.finished = true;
        let outcome = match &result {
            Ok(reply) => {
                let mut bytes = vec![OK];
                bytes.extend(env.encode_reply(reply, Format::MsgPack)?);
                Some(bytes)
            }
            Err(e) if self.store_failures && !e.is_retryable() => {
                let stored = StoredError {
                    kind: e.kind().as_str().to_owned(),
                    code: e.code().map(str::to_owned),
                    message: e.message().to_owned(),
                };
                let mut bytes = vec![FAILED];
                bytes.extend(Format::MsgPack.encode(&stored)?);
                Some(bytes)
            }
            Err(_) => None,
        };
        match outcome {
            Some(bytes) => {
                // Events are published only with a success.
                let events = match (&result, held) {
                    (Ok(_), Some(buffer)) => {
                        std::mem::take(&mut *buffer.lock().unwrap_or_else(|p| p.into_inner()))
                    }
                    _ => Vec::new(),
                };
                let stored = self
                    .store
                    .complete(key, token, bytes.into(), self.retention, events)
                    .await?;
                if !stored {
                    tracing::warn!(
                        key,
                        "idempotency lease expired before the handler finished; its outcome \
                         was not stored (raise the lease)"
                    );
                }
            }
            None => {
                if let Err(e) = self.store.release(key, token).await {
                    tracing::warn!(key, error = %e, "could not release idempotency claim");
                }
            }
        }
        result
    }

    /// What a duplicate gets from a stored outcome.
    fn replay(&self, env: &Envelope<'_>, key: &str, bytes: &[u8]) -> Result<Reply> {
        let corrupt = |what: &str| {
            Error::new(
                ErrorKind::Store,
                format!("stored outcome under `{key}` is corrupt: {what}"),
            )
            .with_message_name(env.name())
            .with_retryable(false)
        };
        match bytes.split_first() {
            Some((&OK, response)) => env
                .decode_reply(response, Format::MsgPack)
                .map_err(|e| corrupt(e.message())),
            Some((&FAILED, error)) => {
                let stored: StoredError = Format::MsgPack
                    .decode(error)
                    .map_err(|e| corrupt(e.message()))?;
                let kind = ErrorKind::from_wire(&stored.kind).unwrap_or(ErrorKind::Handler);
                let mut e = Error::new(kind, stored.message)
                    .with_message_name(env.name())
                    .with_retryable(false);
                if let Some(code) = stored.code {
                    e = e.with_code(code);
                }
                Err(e)
            }
            _ => Err(corrupt("unknown outcome tag")),
        }
    }
}

impl Behavior for Idempotency {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: Next<'a>) -> Result<Reply> {
        let key = self.key(&env);
        let give_up = Instant::now() + self.wait;
        loop {
            match self.store.claim(&key, self.lease).await? {
                Claim::Acquired { token } => {
                    let claim = HeldClaim {
                        store: self.store.clone(),
                        key,
                        token,
                        finished: false,
                    };
                    return self.attempt(env, next, claim).await;
                }
                Claim::Completed(bytes) => return self.replay(&env, &key, &bytes),
                Claim::InProgress => {
                    if Instant::now() >= give_up {
                        return Err(Error::new(
                            ErrorKind::InProgress,
                            format!(
                                "message {} of `{}` is still being handled by another attempt; \
                                 retry later with the same message id",
                                env.context().message_id(),
                                env.name()
                            ),
                        )
                        .with_message_name(env.name()));
                    }
                    tokio::time::sleep(self.poll).await;
                }
            }
        }
    }
}
