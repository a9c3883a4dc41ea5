//! Admission control: how much work a peer takes on at once, and the counts
//! that show it.
//!
//! Every message a peer handles holds a [`Permit`] on two [`Gauge`]s: its
//! subscription's (one per message name) and the peer's (all names). A request
//! that finds either full is answered at once with a retryable `overloaded`
//! error instead of waiting in a buffer its caller will time out on; an event
//! (which cannot be answered) waits in its subscription until both have room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Messages and payload bytes in flight against a limit of each; for one
/// message name, also what its handling came to (the NATS service API's
/// endpoint stats).
#[derive(Debug)]
pub(crate) struct Gauge {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
    /// Messages handled (answered, for requests).
    pub(crate) handled: AtomicU64,
    /// Of those, the ones that ended in an error.
    pub(crate) errors: AtomicU64,
    /// Time spent handling them, in nanoseconds.
    pub(crate) busy_nanos: AtomicU64,
    /// The last error, one line.
    pub(crate) last_error: std::sync::Mutex<String>,
}

impl Gauge {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Gauge {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            handled: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(String::new()),
        }
    }

    /// Counts one handled message that took `took`, and its error if any.
    pub(crate) fn record(&self, took: std::time::Duration, error: Option<&catga_core::Error>) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(e) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
        }
    }

    /// Counts one message of `bytes` in flight on this gauge only (not the
    /// peer's: what JetStream holds is bounded by its own pull), until the
    /// returned guard drops.
    pub(crate) fn in_flight(&self, bytes: usize) -> InFlight<'_> {
        self.take(bytes);
        InFlight { gauge: self, bytes }
    }

    /// Counts one message of `bytes`, whatever the limits.
    fn take(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Takes room for one message of `bytes`, or nothing when that would go
    /// over a limit. One message is always let in when nothing is in flight,
    /// however large (the server's max_payload bounds it), so a byte limit
    /// below the largest message cannot starve it.
    fn try_take(&self, bytes: usize) -> bool {
        let messages = self.messages.fetch_add(1, Ordering::AcqRel);
        let held = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let fits = messages < self.max_messages
            && (messages == 0 || held.saturating_add(bytes) <= self.max_bytes);
        if !fits {
            self.give_back(bytes);
        }
        fits
    }

    fn give_back(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether one more message of any size would go over a limit.
    pub(crate) fn is_full(&self) -> bool {
        let messages = self.messages();
        messages >= self.max_messages || (messages > 0 && self.bytes() >= self.max_bytes)
    }

    /// Messages in flight now.
    pub(crate) fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Payload bytes in flight now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Room for one message on its subscription's gauge and the peer's; given
/// back when dropped (the reply is sent, or the handler failed or panicked).
#[derive(Debug)]
pub(crate) struct Permit {
    subscription: Arc<Gauge>,
    peer: Arc<Peer>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.subscription.give_back(self.bytes);
        self.peer.gauge.give_back(self.bytes);
    }
}

/// Why a message was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Its subscription is at its limit.
    Subscription,
    /// The peer is at its limit.
    Peer,
}

/// The peer-wide gauge and counters, shared by every subscription.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) gauge: Gauge,
    pub(crate) admitted: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) dead_subscriptions: AtomicUsize,
}

impl Peer {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Peer {
            gauge: Gauge::new(max_messages, max_bytes),
            admitted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            dead_subscriptions: AtomicUsize::new(0),
        }
    }

    /// Admits a message of `bytes` on `subscription`, or says which limit is full.
    pub(crate) fn admit(
        self: &Arc<Self>,
        subscription: &Arc<Gauge>,
        bytes: usize,
    ) -> Result<Permit, Full> {
        if !subscription.try_take(bytes) {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Full::Subscription);
        }
        if !self.gauge.try_take(bytes) {
            subscription.give_back(bytes);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Full::Peer);
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            subscription: subscription.clone(),
            peer: self.clone(),
            bytes,
        })
    }
}

impl Peer {
    /// The counts now.
    pub(crate) fn stats(&self, slow_consumer_drops: u64) -> ServeStats {
        ServeStats {
            in_flight: self.gauge.messages(),
            in_flight_bytes: self.gauge.bytes(),
            admitted: self.admitted.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            slow_consumer_drops,
            dead_subscriptions: self.dead_subscriptions.load(Ordering::Relaxed),
        }
    }

    /// Counts a message that is handled whatever the limits (an event: it
    /// cannot be answered, so its subscription stops reading instead).
    pub(crate) fn hold(self: &Arc<Self>, subscription: &Arc<Gauge>, bytes: usize) -> Permit {
        subscription.take(bytes);
        self.gauge.take(bytes);
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Permit {
            subscription: subscription.clone(),
            peer: self.clone(),
            bytes,
        }
    }
}

/// What a peer serving over NATS has taken on and turned away, since it
/// connected (see [`NatsTransport::stats`](crate::NatsTransport::stats)):
/// export these as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeStats {
    /// Requests and core events being handled now (reliable events are
    /// bounded by their JetStream consumer instead, and not counted here).
    pub in_flight: usize,
    /// Payload bytes of the messages being handled now.
    pub in_flight_bytes: usize,
    /// Requests and core events admitted and handled (or being handled).
    pub admitted: u64,
    /// Requests answered `overloaded` at once because the peer or the
    /// message's subscription was at its limit.
    pub shed: u64,
    /// Requests and events that arrived past their deadline and were answered
    /// with a timeout (requests) or dropped (events) without being handled.
    pub expired: u64,
    /// Messages whose decoding or handling panicked (answered with an error).
    pub panicked: u64,
    /// Messages the NATS client dropped because a subscription's buffer was
    /// full (a slow consumer).
    pub slow_consumer_drops: u64,
    /// Subscriptions that stopped serving while the peer runs (the connection
    /// closed for good): the peer is not ready while there is one.
    pub dead_subscriptions: usize,
}

/// One message counted in flight on a [`Gauge`] (see [`Gauge::in_flight`]).
pub(crate) struct InFlight<'a> {
    gauge: &'a Gauge,
    bytes: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_messages_and_bytes_turn_work_away_and_permits_give_room_back() {
        let peer = Arc::new(Peer::new(3, 1000));
        let sub = Arc::new(Gauge::new(2, 100));
        let a = peer.admit(&sub, 60).unwrap();
        // Over the subscription's bytes (60 + 50 > 100).
        assert_eq!(peer.admit(&sub, 50).unwrap_err(), Full::Subscription);
        let b = peer.admit(&sub, 40).unwrap();
        // Over the subscription's messages.
        assert_eq!(peer.admit(&sub, 1).unwrap_err(), Full::Subscription);
        let other = Arc::new(Gauge::new(10, 10_000));
        let c = peer.admit(&other, 1).unwrap();
        // Over the peer's messages, though `other` has room.
        assert_eq!(peer.admit(&other, 1).unwrap_err(), Full::Peer);
        assert_eq!((peer.gauge.messages(), peer.gauge.bytes()), (3, 101));
        drop((a, b, c));
        assert_eq!((peer.gauge.messages(), peer.gauge.bytes()), (0, 0));
        assert_eq!((sub.messages(), sub.bytes()), (0, 0));
        // One message larger than the byte limit still gets in alone.
        assert!(!sub.is_full());
        let big = peer.admit(&sub, 5000).unwrap();
        assert!(sub.is_full(), "over its bytes: events stop reading");
        assert!(peer.admit(&sub, 1).is_err());
        drop(big);
        // Events are held whatever the limits, and count.
        let held: Vec<_> = (0..3).map(|_| peer.hold(&other, 1)).collect();
        assert!(peer.gauge.is_full(), "the peer's 3 messages are taken");
        assert_eq!(peer.admit(&sub, 1).unwrap_err(), Full::Peer);
        drop(held);
        assert_eq!(peer.admitted.load(Ordering::Relaxed), 7);
        assert_eq!(peer.shed.load(Ordering::Relaxed), 5);
    }
}
