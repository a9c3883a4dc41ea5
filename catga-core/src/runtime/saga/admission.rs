//! Admission control for sagas: a saga definition may bound its backlog (the
//! sagas started and not finished), so that a peer offered more than the
//! coordinator can drive refuses new ones at once with a retryable
//! `overloaded` error, instead of letting every saga finish late.
//!
//! The backlog is counted in the saga store, at most once per refresh
//! interval per peer (a round trip, not one per start), plus the sagas this
//! peer started since.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::SagaStore;
use crate::error::{Error, ErrorKind, Result};

/// How old a backlog count may be before a start counts again.
const REFRESH: Duration = Duration::from_millis(100);

/// The backlog of one saga definition, as this peer last counted it.
#[derive(Debug)]
pub(crate) struct Backlog {
    max: Option<usize>,
    count: AtomicUsize,
    /// When the count was last read from the store (`None`: never); held
    /// while a refresh runs, so one start refreshes and the others go on.
    counted: Mutex<Option<Instant>>,
}

impl Backlog {
    pub(crate) fn new(max: Option<usize>) -> Self {
        Backlog {
            max,
            count: AtomicUsize::new(0),
            counted: Mutex::new(None),
        }
    }

    /// `Ok` when saga `name` may start one more; `overloaded` (code
    /// `catga.saga_backlog`, retryable) when its backlog is at its bound.
    pub(crate) async fn admit(&self, store: &dyn SagaStore, name: &str) -> Result<()> {
        let Some(max) = self.max else { return Ok(()) };
        let stale = {
            let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            let stale = counted.is_none_or(|at| at.elapsed() >= REFRESH);
            if stale {
                // Claimed: other starts meanwhile use the count as it is.
                *counted = Some(Instant::now());
            }
            stale
        };
        if stale {
            match store.count_unfinished(name).await {
                Ok(n) => self.count.store(n, Ordering::Relaxed),
                Err(e) => {
                    // A store that cannot count cannot start a saga either;
                    // try again at the next start.
                    *self.counted.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return Err(e);
                }
            }
        }
        let n = self.count.load(Ordering::Relaxed);
        if n >= max {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "saga `{name}` has {n} sagas unfinished, its bound is {max}; try again \
                     shortly"
                ),
            )
            .with_code("catga.saga_backlog")
            .with_retryable(true));
        }
        Ok(())
    }

    /// Counts a saga this peer started (until the next count from the store).
    pub(crate) fn started(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}
