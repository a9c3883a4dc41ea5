//! The outbox relay: moves events from an [`OutboxStore`] to their handlers.
//!
//! Every peer runs one. Relays share the work through the store: an entry is
//! handed to one relay at a time, and one that stays unacknowledged (its relay
//! died between publishing and acknowledging) is handed to another after
//! `min_idle`. So an event can be published twice, never lost; consumers remove
//! duplicates with idempotency on the event's message id, which the relay keeps.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::dispatch::handle::Mediator;
use crate::error::ErrorKind;
use crate::store::{OutboxEntry, OutboxStore};

/// How a relay polls, reclaims and gives up. Deserializable from a
/// configuration file (durations in humantime, `"50ms"`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayOptions {
    /// Entries taken per round. Default 100.
    pub batch: usize,
    /// Pause after a round that found the outbox empty; it doubles with each
    /// empty round up to `max_poll_interval`, and is back to this after a
    /// round with entries. Default 50 ms. A peer wakes its relay at once when
    /// one of its handlers stored events, so the wait only delays entries
    /// another peer stored and could not relay.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The longest pause of an idle relay. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// How long an entry stays with a relay that does not acknowledge it before
    /// another relay takes it. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub min_idle: Duration,
    /// Deliveries before an entry goes to the dead-letter list. Default 10.
    pub max_deliveries: u32,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 100,
            poll_interval: Duration::from_millis(50),
            max_poll_interval: Duration::from_secs(1),
            min_idle: Duration::from_secs(30),
            max_deliveries: 10,
        }
    }
}

/// Relays until `shutdown`, then makes one last pass so nothing stored before
/// shutdown waits for the next start.
pub(crate) async fn run(
    store: Arc<dyn OutboxStore>,
    mediator: Mediator,
    options: RelayOptions,
    shutdown: CancellationToken,
) {
    let consumer = format!("{}-{}", mediator.service(), mediator.peer_id());
    // An outbox that cannot be read is asked again after a growing, jittered
    // wait: relays that lost their store together do not return together.
    let mut backoff = Backoff::new(options.poll_interval, Duration::from_secs(5));
    // An idle relay asks less and less often (Redis is left alone when
    // nothing happens); a local handler that stored events wakes it.
    let mut idle = options.poll_interval;
    let wake = mediator.relay_wake();
    loop {
        let stopping = shutdown.is_cancelled();
        let round = relay_once(&*store, &mediator, &consumer, &options).await;
        if stopping {
            return;
        }
        let wait = match round {
            Ok(n) => {
                backoff.reset();
                if n > 0 {
                    idle = options.poll_interval;
                }
                if n >= options.batch.max(1) {
                    // A full batch: more may be waiting.
                    continue;
                }
                // Drained when it was read. What a local handler stores from
                // now on wakes the relay (the wake is kept until the wait
                // below), so there is no need to look again at once.
                let wait = idle;
                idle = (idle * 2).min(options.max_poll_interval.max(options.poll_interval));
                wait
            }
            Err(()) => backoff.next_delay(),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => idle = options.poll_interval,
            () = shutdown.cancelled() => {}
        }
    }
}

/// One round: claim, publish, acknowledge. Returns how many entries it
/// handled, or `Err` when the outbox could not be read or the transport is
/// away (logged; the loop backs off).
///
/// - An entry is acknowledged only once the transport has flushed it to the
///   server, so a relay that dies after publishing leaves it to be relayed
///   again, never lost.
/// - A transport outage (a retryable transport error) ends the round without
///   counting against the entry: it is not the entry's fault, and a NATS away
///   for minutes must not send every entry to the dead letters.
/// - The round stops publishing at half the reclaim idle time: what is left
///   stays pending with this relay, so no other relay takes it over while
///   this one is still at it.
async fn relay_once(
    store: &dyn OutboxStore,
    mediator: &Mediator,
    consumer: &str,
    options: &RelayOptions,
) -> Result<usize, ()> {
    let entries = match store.claim(consumer, options.batch, options.min_idle).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "outbox relay cannot read the outbox; retrying");
            return Err(());
        }
    };
    let n = entries.len();
    let until = Instant::now() + options.min_idle / 2;
    let mut done = Vec::with_capacity(n);
    let mut away = false;
    for entry in entries {
        let published =
            tokio::time::timeout_at(until, mediator.publish_record(&entry.record)).await;
        match published {
            Ok(Ok(())) => done.push(entry.id),
            Ok(Err(e)) if e.kind() == ErrorKind::Transport && e.is_retryable() => {
                tracing::warn!(error = %e, "outbox relay cannot reach the transport; backing off");
                away = true;
                break;
            }
            Ok(Err(e)) => fail(store, &entry, &e, options).await,
            // Out of time: the rest is relayed in a later round.
            Err(_) => break,
        }
    }
    if !done.is_empty() {
        if let Err(e) = mediator.flush_transport().await {
            tracing::warn!(error = %e, "outbox relay could not flush; entries will be relayed again");
            return Err(());
        }
        if let Err(e) = store.ack(&done).await {
            tracing::warn!(error = %e, "outbox relay could not acknowledge; entries will be relayed again");
        }
    }
    if away {
        return Err(());
    }
    Ok(n)
}

async fn fail(
    store: &dyn OutboxStore,
    entry: &OutboxEntry,
    e: &crate::Error,
    options: &RelayOptions,
) {
    if entry.deliveries >= options.max_deliveries || !e.is_retryable() {
        let reason = format!("{e} (after {} deliveries)", entry.deliveries);
        tracing::error!(event = %entry.record.name, %reason, "outbox entry dead-lettered");
        if let Err(e) = store.dead_letter(entry, &reason).await {
            tracing::warn!(error = %e, "could not dead-letter an outbox entry; it stays pending");
        }
    } else {
        tracing::warn!(event = %entry.record.name, error = %e, deliveries = entry.deliveries,
            "outbox entry not relayed; it will be retried after the idle time");
    }
}
