//! The outbox relay: moves events from an [`OutboxStore`] to their handlers.
//!
//! Every peer runs one. Relays share the work through the store: an entry is
//! handed to one relay at a time, and one that stays unacknowledged (its relay
//! died between publishing and acknowledging) is handed to another after
//! `min_idle`. So an event can be published twice, never lost; consumers remove
//! duplicates with idempotency on the event's message id, which the relay keeps.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::mediator::Mediator;
use crate::store::{OutboxEntry, OutboxStore};

/// How a relay polls, reclaims and gives up.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Entries taken per round. Default 100.
    pub batch: usize,
    /// Pause when the outbox is empty. Default 50 ms.
    pub poll_interval: Duration,
    /// How long an entry stays with a relay that does not acknowledge it before
    /// another relay takes it. Default 30 s.
    pub min_idle: Duration,
    /// Deliveries before an entry goes to the dead-letter list. Default 10.
    pub max_deliveries: u32,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 100,
            poll_interval: Duration::from_millis(50),
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
                    continue;
                }
                options.poll_interval
            }
            Err(()) => backoff.next_delay(),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// One round: claim, publish, acknowledge. Returns how many entries it
/// handled, or `Err` when the outbox could not be read (logged).
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
    let mut done = Vec::with_capacity(n);
    for entry in entries {
        match mediator.publish_record(&entry.record).await {
            Ok(()) => done.push(entry.id),
            Err(e) => fail(store, &entry, &e, options).await,
        }
    }
    if !done.is_empty() {
        if let Err(e) = store.ack(&done).await {
            tracing::warn!(error = %e, "outbox relay could not acknowledge; entries will be relayed again");
        }
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
