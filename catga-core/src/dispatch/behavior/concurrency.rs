//! A bound on how many dispatches run at once.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Behavior, Envelope, Next, Reply};
use crate::error::{Error, ErrorKind, Result};

/// Lets at most `limit` dispatches through at once. By default a dispatch over
/// the limit waits for a slot (until its deadline); with
/// [`reject_when_full`](ConcurrencyLimit::reject_when_full) it fails at once with
/// [`ErrorKind::Overloaded`], which is retryable.
///
/// Added globally it bounds the whole peer; with `behavior_for` one message type.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    reject: bool,
}

impl ConcurrencyLimit {
    /// At most `limit` (at least 1) dispatches at once.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        ConcurrencyLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            reject: false,
        }
    }

    /// Fails with `Overloaded` instead of waiting when every slot is taken.
    #[must_use]
    pub fn reject_when_full(mut self) -> Self {
        self.reject = true;
        self
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Behavior for ConcurrencyLimit {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let permit = if self.reject {
            self.permits.try_acquire().map_err(|_| {
                Error::new(
                    ErrorKind::Overloaded,
                    format!(
                        "`{}` refused: {} dispatches already running; retry later or raise the limit",
                        env.name(),
                        self.limit
                    ),
                )
                .with_message_name(env.name())
            })?
        } else {
            self.permits.acquire().await.map_err(|_| {
                Error::new(ErrorKind::Cancelled, "concurrency limit closed")
                    .with_message_name(env.name())
            })?
        };
        let result = next.run(env).await;
        drop(permit);
        result
    }
}
