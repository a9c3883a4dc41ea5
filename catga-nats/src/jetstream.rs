//! JetStream: the streams of reliable events and dead letters, and serving
//! reliable events (at least once, redelivered with backoff, dead-lettered
//! after too many failures).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use catga_core::backoff::Backoff;
use catga_core::transport::{Inbound, WireMessage};
use catga_core::{Error, ErrorKind, Result};
use futures_util::future::FusedFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::Gauge;
use crate::discovery::Kind;
use crate::options::JetStreamOptions;
use crate::protocol::{self, header};
use crate::serve::receive_span;
use crate::shared::{Shared, transport_error};

impl Shared {
    /// Creates the event and dead-letter streams if missing.
    pub(crate) async fn ensure_streams(&self) -> Result<()> {
        self.streams
            .get_or_try_init(|| async {
                let o = &self.options;
                let js = &o.jetstream;
                let replicas = js.replicas.unwrap_or_else(|| {
                    // The server lists the other nodes' client URLs with its own.
                    let nodes = self.client.server_info().connect_urls.len();
                    nodes.clamp(1, 3)
                });
                for (name, subject, retention) in [
                    (
                        o.stream_name(),
                        format!("{}.rel.>", o.prefix),
                        stream::RetentionPolicy::Limits,
                    ),
                    (
                        o.dead_letter_stream_name(),
                        format!("{}.dlq.>", o.prefix),
                        stream::RetentionPolicy::Limits,
                    ),
                    // Each command is taken by one copy and gone once acked.
                    (
                        o.commands_stream_name(),
                        format!("{}.cmd.>", o.prefix),
                        stream::RetentionPolicy::WorkQueue,
                    ),
                ] {
                    let stream = self
                        .js
                        .get_or_create_stream(stream::Config {
                            name: name.clone(),
                            subjects: vec![subject.clone()],
                            max_age: js.max_age,
                            duplicate_window: js.duplicate_window,
                            num_replicas: replicas,
                            max_bytes: js.max_bytes,
                            discard: stream::DiscardPolicy::Old,
                            retention,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| {
                            transport_error(format!("cannot create JetStream stream `{name}`: {e}"))
                        })?;
                    let config = &stream.cached_info().config;
                    if config.subjects != [subject.clone()] {
                        self.upgrade_stream(&name, config.clone(), subject).await?;
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// A stream made by an earlier version (over `<prefix>.evt.>`, which
    /// captured every core event too) is narrowed to the reliable subjects.
    /// Events it stored under the old subjects are no longer delivered:
    /// `docs/deployment.md` says how to drain them first.
    async fn upgrade_stream(
        &self,
        name: &str,
        mut config: stream::Config,
        subject: String,
    ) -> Result<()> {
        tracing::info!(
            stream = name,
            from = ?config.subjects,
            to = %subject,
            "narrowing the JetStream stream to reliable events"
        );
        config.subjects = vec![subject];
        self.js
            .update_stream(config)
            .await
            .map(drop)
            .map_err(|e| transport_error(format!("cannot update JetStream stream `{name}`: {e}")))
    }

    /// Publishes through JetStream and waits for the stream's ack. The message
    /// id and the payload's fingerprint make `Nats-Msg-Id`, so the stream
    /// drops a republished duplicate (the relay publishing an entry again)
    /// but stores a message that reuses an id with other bytes, for the
    /// receiver to refuse or handle, instead of dropping it unseen.
    pub(crate) async fn publish_reliable(
        &self,
        msg: WireMessage,
        subject: Subject,
        mut headers: async_nats::HeaderMap,
    ) -> Result<()> {
        self.ensure_streams().await?;
        let id = format!(
            "{}.{:016x}",
            msg.message_id.hyphenated(),
            catga_core::codec::fingerprint(&msg.payload)
        );
        headers.insert(header::NATS_MSG_ID, id.as_str());
        // For the error: an event's `.rel.` subject or a command's `.cmd.` one.
        let shown = subject.clone();
        let size = msg.payload.len();
        let acked = match self
            .js
            .publish_with_headers(subject, headers, msg.payload)
            .await
        {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        acked.map_err(|e| {
            if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded {
                // Storing it again cannot help: an outbox relay dead-letters
                // it instead of stalling on it.
                let why = format!("{size} bytes is over the server's max_payload");
                return Shared::publish_error(msg.name, &shown, why).with_retryable(false);
            }
            Shared::publish_error(msg.name, &shown, e.to_string())
        })
    }
}

/// Retries a setup step while JetStream is still forming (a cluster electing its
/// meta leader answers nothing for a moment), for up to a minute.
pub(crate) async fn with_retries<T, F, Fut>(what: &str, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, ?wait, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn durable_name(service: &str, name: &str) -> String {
    format!("{service}__{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a stored message is to the peer that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A reliable event: every handling service has its consumer.
    Event,
    /// A durable command: one consumer, shared by the copies of its service.
    Command,
}

impl Stored {
    fn what(self) -> &'static str {
        match self {
            Stored::Event => "event",
            Stored::Command => "command",
        }
    }

    /// Its kind in the service API.
    pub(crate) fn kind(self) -> Kind {
        match self {
            Stored::Event => Kind::ReliableEvent,
            Stored::Command => Kind::DurableCommand,
        }
    }

    /// The subject messages `name` of this kind are stored under.
    pub(crate) fn subject(self, prefix: &str, name: &str) -> String {
        match self {
            Stored::Event => protocol::reliable_subject(prefix, name),
            Stored::Command => protocol::command_subject(prefix, name),
        }
    }
}

/// The durable consumer of `service` for stored messages `name` of kind
/// `stored`: per (service, event) for events, one per command.
pub(crate) async fn reliable_consumer(
    shared: &Shared,
    service: &str,
    name: &str,
    stored: Stored,
) -> Result<jetstream::consumer::PullConsumer> {
    let o = &shared.options;
    let (stream, durable, filter) = match stored {
        Stored::Event => (
            o.stream_name(),
            durable_name(service, name),
            protocol::reliable_subject(&o.prefix, name),
        ),
        Stored::Command => (
            o.commands_stream_name(),
            durable_name("cmd", name),
            protocol::command_subject(&o.prefix, name),
        ),
    };
    let stream_handle =
        shared.js.get_stream(&stream).await.map_err(|e| {
            transport_error(format!("cannot open JetStream stream `{stream}`: {e}"))
        })?;
    // Created, or updated when an earlier version made it (filtering on the
    // old event subject).
    stream_handle
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            ack_wait: o.jetstream.ack_wait,
            // Catga dead-letters after `max_deliveries`; the server limit is a
            // safety net for peers that crash on every delivery.
            max_deliver: i64::from(o.jetstream.max_deliveries) + 2,
            max_ack_pending: o.max_in_flight as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| transport_error(format!("cannot create JetStream consumer `{durable}`: {e}")))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_reliable(
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
    name: &'static str,
    stored: Stored,
    consumer: jetstream::consumer::PullConsumer,
    gauge: Arc<Gauge>,
    shutdown: CancellationToken,
    work: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(shared.options.max_in_flight));
    while !shutdown.is_cancelled() {
        let batch = shared.options.max_in_flight.min(256);
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event = name, error = %e, "cannot pull from JetStream; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let (shared, inbound, gauge) = (shared.clone(), inbound.clone(), gauge.clone());
                    work.spawn(async move {
                        handle_reliable(&shared, &*inbound, name, stored, msg, &gauge).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(event = name, error = %e, "JetStream pull interrupted; resuming");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn handle_reliable(
    shared: &Shared,
    inbound: &dyn Inbound,
    name: &'static str,
    stored: Stored,
    msg: jetstream::Message,
    gauge: &Gauge,
) {
    let _in_flight = gauge.in_flight(msg.payload.len());
    let started = std::time::Instant::now();
    let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload.clone());
    let span = receive_span(name, &wire);
    async move {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let js = &shared.options.jetstream;
        let handling = async {
            match wire {
                Ok(mut wire) => {
                    // A stored message is worth handling whenever it is delivered.
                    wire.timeout = None;
                    match stored {
                        Stored::Event => inbound.event(wire).await,
                        // The response goes nowhere: the sender did not wait.
                        Stored::Command => inbound.request(wire).await.map(drop),
                    }
                }
                Err(e) => Err(e),
            }
        };
        let result = in_progress(&msg, js.ack_wait, handling).await;
        gauge.record(started.elapsed(), result.as_ref().err());
        let ack = match (disposition(&result, delivered, js), result) {
            (_, Ok(())) => msg.ack().await,
            (Disposition::Leave, Err(e)) => {
                tracing::info!(error = %e, delivered, what = stored.what(), "another attempt took it over; leaving the message to it");
                Ok(())
            }
            (Disposition::Nak(delay), Err(e)) => {
                tracing::warn!(error = %e, delivered, ?delay, what = stored.what(), "failed; redelivering later");
                msg.ack_with(AckKind::Nak(Some(delay))).await
            }
            (_, Err(e)) => match dead_letter(shared, name, &msg, &e, delivered).await {
                Ok(()) => {
                    tracing::error!(error = %e, delivered, what = stored.what(), "dead-lettered");
                    msg.ack_with(AckKind::Term).await
                }
                Err(dl) => {
                    tracing::error!(error = %dl, "could not dead-letter; redelivering");
                    msg.ack_with(AckKind::Nak(Some(js.max_backoff))).await
                }
            },
        };
        if let Err(e) = ack {
            tracing::warn!(error = %e, "could not acknowledge; JetStream will redeliver");
        }
    }
    .instrument(span)
    .await;
}

/// What becomes of a stored message once its handling ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disposition {
    /// Handled: acknowledged.
    Ack,
    /// Offered again after this delay.
    Nak(Duration),
    /// Given up on: to the dead letters, then terminated.
    DeadLetter,
    /// Neither: another attempt owns it now (this one's claim was taken
    /// over while it ran). Acknowledging or terminating it would end the
    /// message under the other attempt, which may still fail and need it.
    Leave,
}

/// The disposition of a message delivered `delivered` times (1 the first)
/// whose handling ended in `result`.
///
/// A message whose key another attempt holds (`in_progress`: a copy still
/// handling it, a claim left by a copy that died or by a store call that
/// applied after its caller gave up) is offered again after `ack_wait`
/// (jittered), not after the short failure backoff: by then the holder has
/// finished or its claim has lapsed, so its deliveries are not spent in a
/// few seconds and the message dead-lettered without ever being handled.
fn disposition(result: &Result<()>, delivered: u32, js: &JetStreamOptions) -> Disposition {
    let Err(e) = result else {
        return Disposition::Ack;
    };
    if delivered >= js.max_deliveries {
        // The server will not offer it again: left alone, it would be
        // neither handled nor dead-lettered.
        return Disposition::DeadLetter;
    }
    // One handler of an event among several may have lost its claim.
    let lost = |e: &Error| e.code() == Some("catga.claim_lost");
    if lost(e) || e.related().iter().any(lost) {
        return Disposition::Leave;
    }
    if !e.is_retryable() {
        return Disposition::DeadLetter;
    }
    if e.kind() == ErrorKind::InProgress {
        return Disposition::Nak(js.ack_wait.mul_f64(1.0 + fastrand::f64() / 2.0));
    }
    // Full jitter: messages that failed together come back apart.
    let delay = Backoff::new(js.backoff, js.max_backoff)
        .cap(delivered)
        .mul_f64(fastrand::f64());
    Disposition::Nak(delay)
}

/// Runs `work`, telling JetStream every third of `ack_wait` that the message
/// is still being handled (an in-progress acknowledgement): a handler that
/// takes longer than `ack_wait` keeps its message instead of having it
/// redelivered, to another copy or this one, while it still runs. Work that
/// finishes at once sets no timer.
async fn in_progress<T>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    if let Some(done) = (&mut work).now_or_never() {
        return done;
    }
    let every = (ack_wait / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // After a slow acknowledgement, the next one a period later, not a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The acknowledgement is sent beside the work, never instead of it: a
    // client slow to take it (reconnecting, its buffer full) must not stall
    // the handler and the renewal of its claim.
    let mut telling = std::pin::pin!(futures_util::future::Fuse::terminated());
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick(), if telling.is_terminated() => {
                telling.set(msg.ack_with(AckKind::Progress).fuse());
            }
            told = &mut telling, if !telling.is_terminated() => {
                if let Err(e) = told {
                    tracing::debug!(error = %e, "could not tell JetStream the message is in progress");
                }
            }
        }
    }
}

async fn dead_letter(
    shared: &Shared,
    name: &str,
    msg: &jetstream::Message,
    error: &Error,
    delivered: u32,
) -> Result<()> {
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert(header::NAME, name);
    let one_line: String = error
        .message()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(header::ERROR_KIND, error.kind().as_str());
    if let Some(code) = error
        .code()
        .and_then(|c| c.parse::<async_nats::HeaderValue>().ok())
    {
        headers.insert(header::ERROR_CODE, code);
    }
    if let Ok(v) = one_line.parse::<async_nats::HeaderValue>() {
        headers.insert(header::ERROR_MESSAGE, v);
    }
    headers.insert(header::DELIVERIES, delivered.to_string().as_str());
    if let Ok(subject) = msg.subject.as_str().parse::<async_nats::HeaderValue>() {
        headers.insert(header::SUBJECT, subject);
    }
    if let Some(service) = msg
        .info()
        .ok()
        .map(|i| i.consumer.to_owned())
        .and_then(|c| c.parse::<async_nats::HeaderValue>().ok())
    {
        headers.insert(header::FAILED_SERVICE, service);
    }
    // The dead-letter entry is a new message: dedup must not swallow it.
    headers.insert(
        header::NATS_MSG_ID,
        format!("dlq-{}", catga_core::new_id()).as_str(),
    );
    let subject = protocol::dead_letter_subject(shared.prefix(), name);
    let payload: Bytes = msg.payload.clone();
    shared
        .js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| transport_error(format!("dead-letter publish to `{subject}`: {e}")))?
        .await
        .map_err(|e| transport_error(format!("dead-letter ack from `{subject}`: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: ErrorKind) -> Result<()> {
        Err(Error::new(kind, "failed"))
    }

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Noted;
    impl catga_core::Message for Noted {
        const NAME: &'static str = "test.Noted";
    }
    impl catga_core::Event for Noted {}

    /// What an event with two failing handlers comes to: a store error first,
    /// a lost claim among the related failures.
    async fn several_failures() -> Result<()> {
        let m = catga_core::Catga::builder()
            .event_fn(|_: Noted, _| async { Err(Error::new(ErrorKind::Store, "away")) })
            .event_fn(|_: Noted, _| async {
                Err(Error::new(ErrorKind::Conflict, "lost").with_code("catga.claim_lost"))
            })
            .build()
            .unwrap();
        m.publish(Noted).await
    }

    #[tokio::test]
    async fn each_outcome_has_its_disposition() {
        let js = JetStreamOptions {
            max_deliveries: 3,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            ..JetStreamOptions::default()
        };
        assert_eq!(disposition(&Ok(()), 1, &js), Disposition::Ack);
        // A retryable failure: soon, with jitter under the doubled backoff.
        for _ in 0..100 {
            let Disposition::Nak(delay) = disposition(&failed(ErrorKind::Store), 2, &js) else {
                panic!("a retryable failure is offered again");
            };
            assert!(delay <= Duration::from_millis(400), "{delay:?}");
        }
        // Held by another attempt: after about `ack_wait`, never within the
        // short backoff that would spend every delivery in seconds.
        for _ in 0..100 {
            let Disposition::Nak(delay) = disposition(&failed(ErrorKind::InProgress), 2, &js)
            else {
                panic!("a held message is offered again");
            };
            assert!(
                delay >= Duration::from_secs(30) && delay <= Duration::from_secs(45),
                "{delay:?}"
            );
        }
        // Out of deliveries, or not worth another: the dead letters.
        assert_eq!(
            disposition(&failed(ErrorKind::Store), 3, &js),
            Disposition::DeadLetter
        );
        assert_eq!(
            disposition(&failed(ErrorKind::Validation), 1, &js),
            Disposition::DeadLetter
        );
        // Taken over by another attempt: left to it, also when it is one of
        // an event's several failures; but not once the server offers it no
        // more.
        let lost = Error::new(ErrorKind::Conflict, "lost").with_code("catga.claim_lost");
        assert_eq!(disposition(&Err(lost.clone()), 2, &js), Disposition::Leave);
        assert_eq!(
            disposition(&several_failures().await, 2, &js),
            Disposition::Leave
        );
        assert_eq!(disposition(&Err(lost), 3, &js), Disposition::DeadLetter);
    }
}
