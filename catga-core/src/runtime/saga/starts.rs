//! Sagas started on this peer, handed straight to its coordinator.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::SagaState;

/// At most this many started sagas wait to be handed over, here and again in
/// the coordinator (states it took but has no driver for yet); the
/// coordinator's listing finds any beyond.
pub(crate) const MAX_HANDED: usize = 1024;

/// The sagas of one definition started on this peer, for its coordinator
/// while it runs here: it drives them from the state their start stored,
/// instead of listing and loading them from the store (two round trips each).
/// On another peer's coordinator, a start here is found by its listing.
#[derive(Debug, Default)]
pub(crate) struct Starts {
    wake: Notify,
    handed: Mutex<Handed>,
}

#[derive(Debug, Default)]
struct Handed {
    /// The coordinator runs on this peer.
    leading: bool,
    states: Vec<SagaState>,
}

impl Starts {
    fn handed(&self) -> MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A start on this peer stored `state`: hand it over while the
    /// coordinator runs here, and wake the coordinator.
    pub(crate) fn started(&self, state: SagaState) {
        {
            let mut handed = self.handed();
            if handed.leading && handed.states.len() < MAX_HANDED {
                handed.states.push(state);
            }
        }
        self.wake.notify_waiters();
    }

    /// The coordinator runs here until the guard drops; what is handed over
    /// meanwhile waits for [`Starts::take`], and is dropped with the guard
    /// (the next leader finds those sagas by listing).
    pub(crate) fn lead(&self) -> Leading<'_> {
        self.handed().leading = true;
        Leading(self)
    }

    /// Whether sagas wait to be taken.
    pub(crate) fn has_handed(&self) -> bool {
        !self.handed().states.is_empty()
    }

    /// The sagas handed over since the last call.
    pub(crate) fn take(&self) -> Vec<SagaState> {
        std::mem::take(&mut self.handed().states)
    }

    /// Completes at the next start on this peer (armed when polled or
    /// `enable`d).
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }
}

/// See [`Starts::lead`].
#[derive(Debug)]
pub(crate) struct Leading<'a>(&'a Starts);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut handed = self.0.handed();
        handed.leading = false;
        handed.states.clear();
    }
}
