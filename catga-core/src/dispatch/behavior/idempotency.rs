//! Idempotency: a message id is handled once; duplicates get the stored response.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::{Behavior, Envelope, Next, Reply};
use crate::backoff::Backoff;
use crate::codec::Format;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Claim, Completed, Completion, IdempotencyStore};

/// Runs the handler once per (handler, message id) and replays the stored
/// outcome to duplicates.
///
/// The rules, as they hold (see `docs/architecture.md` for the table of what
/// holds on a crash, a timeout, a lease expiry and a store failover):
///
/// - **An attempt that started runs to its end.** The first attempt claims the
///   key as in-progress and runs the rest of the pipeline. The route runs it on
///   a task of its own, so the caller's deadline or disconnect ends the caller's
///   wait, not the handler: its outcome is stored whatever happens to the caller,
///   and a retry with the same id gets that outcome.
/// - **The claim is renewed while the handler runs** (every third of `lease`),
///   so `lease` need only outlast a pause of the whole peer (a stopped process,
///   a store that cannot be reached), not the handler.
/// - **A claim is released only when the handler returned an error**, which
///   says that no effect happened (or that the failure is one it wants to see
///   again). It is never released because the attempt was dropped or panicked:
///   the effect may have happened, so the claim stays until its lease runs out.
/// - **A completion that finds its claim lost is an error** (kind
///   [`Conflict`](ErrorKind::Conflict), code `catga.claim_lost`): the lease ran
///   out while the peer was paused (and another attempt may have taken the
///   key). Nothing of this attempt is stored, neither its response nor its
///   events.
/// - **A duplicate must carry the same payload.** The outcome is stored with a
///   fingerprint of the message's payload (the bytes it arrived in; its
///   MessagePack encoding when sent in this process). The same message id
///   with another payload is refused with [`Conflict`](ErrorKind::Conflict)
///   (code `catga.idempotency_key_reused`, not retryable) instead of getting
///   the first request's outcome.
/// - **A duplicate that finds the key in progress waits** for the outcome with
///   jittered exponential backoff (10 ms doubling to 500 ms), at most `wait` and
///   never past its own deadline, then fails with [`ErrorKind::InProgress`]
///   (retryable).
///
/// The key is the handler's stable id and the message id. A request's handler
/// id is its message name; an event handler's is the message name and the
/// handler's registered name (or its position among the event's handlers), so
/// every handler of an event is idempotent on its own and every copy of a
/// service computes the same key whatever compiler built it. Add the behavior
/// once per message type: `build()` refuses a handler wrapped in two (the
/// inner one would wait for the outer one's claim).
///
/// **Outbox.** When the mediator runs an outbox relay (`.idempotency(store)`
/// on the builder sets both up with one store; or `.outbox(store)` with the
/// same store), events the handler publishes through its
/// context are held back and written with the response in one atomic step, so
/// they are published if and only if the handler's result is stored: none on
/// failure, none lost on a crash after success.
///
/// **Unit of work.** State changes the handler stages with
/// [`Context::stage`](crate::Context::stage) commit in that same step, only
/// while the conditions staged with them hold; when one does not, nothing is
/// written, the claim is released and the attempt fails with a retryable
/// [`Conflict`](ErrorKind::Conflict) (code `catga.condition_failed`); when a
/// write does not fit what its key holds, nothing is written either and the
/// attempt fails for good ([`Store`](ErrorKind::Store), code
/// `catga.wrong_type`). A message that names its
/// [`partition`](crate::Message::partition) keeps its claim, its events and
/// its unit of work in that partition's shard.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    lease: Duration,
    retention: Duration,
    wait: Duration,
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
    /// Idempotency backed by `store` (a shared `Arc<S>` is a store too):
    /// 30 s lease, 24 h retention, 5 s wait.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Idempotency {
            store: Arc::new(store),
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            wait: Duration::from_secs(5),
            scope: None,
            store_failures: false,
        }
    }

    /// How long a claim survives without renewal. The attempt renews it every
    /// third of this while its handler runs, so it bounds how long a paused or
    /// cut-off peer blocks the key, not how long a handler may take.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
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

    /// A fixed scope instead of the handler's id.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// `<scope>:<message id>`, behind a `{<partition>}` hash tag when the
    /// message names its partition (see [`IdempotencyStore`]).
    fn key(&self, env: &Envelope<'_>) -> String {
        let mut id = [0u8; 36];
        let id = env
            .context()
            .message_id()
            .hyphenated()
            .encode_lower(&mut id);
        let scope = self.scope.as_deref().unwrap_or(env.handler_id());
        let partition = env.partition();
        let p = partition.as_deref().unwrap_or("");
        let mut key = String::with_capacity(p.len() + 2 + scope.len() + 1 + id.len());
        if partition.is_some() {
            key.push('{');
            key.push_str(p);
            key.push('}');
        }
        key.push_str(scope);
        key.push(':');
        key.push_str(id);
        key
    }
}

/// The error of an attempt whose claim ran out (and may have been taken)
/// while its handler ran.
fn claim_lost(env: &Envelope<'_>) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "the claim on message {} of `{}` ran out while its handler ran (the peer was paused \
             or cut off from the store for longer than the lease), and another attempt may have \
             taken it; \
             this attempt's outcome, events and staged writes were not stored (effects it made \
             outside its unit of work may have happened twice): retry with the same message id \
             to get the stored outcome",
            env.context().message_id(),
            env.name()
        ),
    )
    .with_code("catga.claim_lost")
    .with_message_name(env.name())
}

/// Tag of a stored outcome: the first byte of the stored value.
const OK: u8 = 0;
const FAILED: u8 = 1;
/// An outcome stored with its message's payload fingerprint: the tag, eight
/// bytes of fingerprint (big-endian), then an `OK` or `FAILED` outcome.
/// Outcomes stored before fingerprints existed have none and are not checked.
const FINGERPRINTED: u8 = 2;

/// A stored failure: what a duplicate gets back instead of running again.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredError {
    kind: String,
    code: Option<String>,
    message: String,
}

/// Logs an attempt dropped before its outcome was stored. Its claim is left to
/// its lease: the handler may have applied its effect, so running it again at
/// once could apply it twice.
/// What it held back is closed with it, so that a task the handler spawned
/// cannot hold more where nothing would read it.
struct Unfinished<'a> {
    key: &'a str,
    finished: bool,
    held: Option<crate::dispatch::context::OutboxBuffer>,
    staged: crate::dispatch::context::WorkBuffer,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(held) = &self.held {
                crate::dispatch::context::close(held);
            }
            crate::dispatch::context::close(&self.staged);
            tracing::warn!(
                key = self.key,
                "idempotent attempt dropped before its outcome was stored; its claim stays \
                 until the lease runs out"
            );
        }
    }
}

impl Idempotency {
    /// Runs the handler as the attempt holding the claim, and stores its outcome.
    async fn attempt<'a>(
        &'a self,
        env: Envelope<'a>,
        next: impl Next<'a>,
        key: &str,
        token: &str,
    ) -> Result<Reply> {
        let ctx = env.context();
        // Taken before the handler runs. A message that cannot be encoded
        // (it arrived some other way) is stored without one.
        let fingerprint = env.payload_fingerprint().ok();
        // Hold back published events only when a relay will move them.
        let held = ctx.mediator().has_outbox().then(|| ctx.hold_events());
        let staged = ctx.hold_work();
        let mut unfinished = Unfinished {
            key,
            finished: false,
            held: held.clone(),
            staged: staged.clone(),
        };
        let lost = AtomicBool::new(false);
        let mut handler = std::pin::pin!(next.run(env));
        // A handler that finishes at once needs no renewal (and no timer).
        let result = match handler.as_mut().now_or_never() {
            Some(result) => result,
            // Boxed: the renewal's timer is room only handlers that wait need.
            None => Box::pin(self.renewing(handler, key, token, &lost)).await,
        };
        unfinished.finished = true;
        // What the handler held back, taken now that it returned: anything
        // held later (a task it spawned) is refused, not kept unread.
        let held = held.and_then(|buffer| crate::dispatch::context::close(&buffer));
        let staged = crate::dispatch::context::close(&staged).unwrap_or_default();
        if lost.load(Ordering::Relaxed) {
            // The key may hold another attempt's claim by now: complete() below
            // confirms it and stores nothing, but a release must not run either.
            tracing::warn!(key, "the claim's lease ran out while the handler ran");
        }
        let outcome = match &result {
            Ok(reply) => {
                let mut bytes = env.encode_reply(reply, Format::MsgPack)?;
                bytes.insert(0, OK);
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
        let Some(bytes) = outcome.map(|inner| match fingerprint {
            Some(fp) => {
                let mut bytes = Vec::with_capacity(9 + inner.len());
                bytes.push(FINGERPRINTED);
                bytes.extend_from_slice(&fp.to_be_bytes());
                bytes.extend(inner);
                bytes
            }
            None => inner,
        }) else {
            // The handler said it failed: nothing happened, the next attempt runs.
            if let Err(e) = self.store.release(key, token).await {
                tracing::warn!(key, error = %e, "could not release idempotency claim; it expires with its lease");
            }
            return result;
        };
        // Events and staged writes commit only with a success.
        let mut completion = Completion::new(bytes.into(), self.retention);
        if result.is_ok() {
            if let Some(events) = held {
                completion = completion.events(events);
            }
            completion = completion.work(staged);
        }
        let stored_events = !completion.events.is_empty();
        let changed = match self.store.complete(key, token, completion).await? {
            Completed::Stored => {
                if stored_events {
                    ctx.mediator().wake_relay();
                }
                return result;
            }
            Completed::ConditionFailed { key: changed } => changed,
            Completed::WrongType { key: unfit } => {
                // Nothing was written; the next attempt would fail the same.
                if let Err(e) = self.store.release(key, token).await {
                    tracing::warn!(key, error = %e, "could not release idempotency claim; it expires with its lease");
                }
                return Err(Error::new(
                    ErrorKind::Store,
                    format!(
                        "a staged write of message {} of `{}` does not fit what `{unfit}` holds \
                         (another type, or not an integer to increment); nothing was written",
                        ctx.message_id(),
                        env.name()
                    ),
                )
                .with_code("catga.wrong_type")
                .with_retryable(false)
                .with_message_name(env.name()));
            }
            _ => return Err(claim_lost(&env)),
        };
        // Nothing was written: the next attempt reads the state again.
        if let Err(e) = self.store.release(key, token).await {
            tracing::warn!(key, error = %e, "could not release idempotency claim; it expires with its lease");
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "`{changed}` changed after the handler of message {} of `{}` read it; nothing \
                 was written: retry with the same message id",
                ctx.message_id(),
                env.name()
            ),
        )
        .with_code("catga.condition_failed")
        .with_retryable(true)
        .with_message_name(env.name()))
    }

    /// Runs `handler` while renewing its claim.
    async fn renewing(
        &self,
        handler: std::pin::Pin<&mut (impl std::future::Future<Output = Result<Reply>> + Send)>,
        key: &str,
        token: &str,
        lost: &AtomicBool,
    ) -> Result<Reply> {
        tokio::select! {
            result = handler => result,
            never = self.keep_claim(key, token, lost) => match never {},
        }
    }

    /// Renews the claim every third of the lease until dropped; notes in `lost`
    /// when the claim is no longer this attempt's. Never returns.
    async fn keep_claim(
        &self,
        key: &str,
        token: &str,
        lost: &AtomicBool,
    ) -> std::convert::Infallible {
        let every = self.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            if lost.load(Ordering::Relaxed) {
                continue;
            }
            match self.store.renew(key, token, self.lease).await {
                Ok(true) => {}
                Ok(false) => lost.store(true, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not renew the idempotency claim; retrying")
                }
            }
        }
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
        let bytes = match bytes.split_first() {
            Some((&FINGERPRINTED, rest)) if rest.len() >= 8 => {
                let (stored, outcome) = rest.split_at(8);
                let stored = u64::from_be_bytes(stored.try_into().unwrap_or_default());
                if env.payload_fingerprint().is_ok_and(|fp| fp != stored) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "message id {} of `{}` was used before with a different payload; \
                             the first one's outcome is kept: send a new request with a new \
                             message id",
                            env.context().message_id(),
                            env.name()
                        ),
                    )
                    .with_code("catga.idempotency_key_reused")
                    .with_retryable(false)
                    .with_message_name(env.name()));
                }
                outcome
            }
            _ => bytes,
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
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let key = self.key(&env);
        let ctx = env.context();
        // A duplicate waits at most `wait`, and never past its own deadline.
        let mut give_up = Instant::now() + self.wait;
        if let Some(deadline) = ctx.deadline() {
            give_up = give_up.min(deadline);
        }
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        loop {
            match self.store.claim(&key, self.lease).await? {
                Claim::Acquired { token } => {
                    return self.attempt(env, next, &key, &token).await;
                }
                Claim::Completed(bytes) => return self.replay(&env, &key, &bytes),
                Claim::InProgress => {
                    let now = Instant::now();
                    if now >= give_up {
                        return Err(Error::new(
                            ErrorKind::InProgress,
                            format!(
                                "message {} of `{}` is still being handled by another attempt; \
                                 retry later with the same message id",
                                ctx.message_id(),
                                env.name()
                            ),
                        )
                        .with_message_name(env.name()));
                    }
                    let pause = backoff.next_delay().min(give_up - now);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn runs_to_completion(&self) -> bool {
        true
    }
}
