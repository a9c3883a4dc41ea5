//! Retries of retryable failures, with exponential backoff and jitter.

use std::time::Duration;

use super::{Behavior, Envelope, Next, Reply};
use crate::backoff::Backoff;
use crate::error::{ErrorKind, Result};

/// Runs the rest of the pipeline again when it fails with a
/// [retryable](crate::Error::is_retryable) error, up to `max_attempts` attempts in
/// all. The wait before attempt *n + 1* is drawn uniformly from
/// `[0, min(max_delay, initial_delay · 2ⁿ⁻¹)]` ("full jitter"), and never runs past
/// the dispatch deadline. Non-retryable errors return at once, and so does a
/// retryable one when the peer's [`RetryBudget`](crate::RetryBudget) is
/// spent: retries add a bounded share of load, never a multiple of it. An
/// [`Overloaded`](crate::ErrorKind::Overloaded) answer returns at once too:
/// it asks whoever offered the work to back off, and retrying it here would
/// keep the overload (a remote send already tried other copies).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
}

impl Retry {
    /// Up to `max_attempts` attempts (at least 1), starting at 50 ms backoff capped
    /// at 5 s.
    pub fn new(max_attempts: u32) -> Self {
        Retry {
            max_attempts: max_attempts.max(1),
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }

    /// Sets the first backoff and the cap.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max.max(initial);
        self
    }

    /// The longest wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn max_delay_after(&self, attempt: u32) -> Duration {
        self.schedule().cap(attempt)
    }

    fn schedule(&self) -> Backoff {
        Backoff::new(self.initial_delay, self.max_delay)
    }
}

impl Behavior for Retry {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let mut attempt = 1;
        let mut backoff = self.schedule();
        let budget = env.context().mediator().retry_budget();
        budget.deposit();
        loop {
            match next.run(env).await {
                Err(e)
                    if e.is_retryable()
                        && e.kind() != ErrorKind::Overloaded
                        && attempt < self.max_attempts =>
                {
                    if !budget.withdraw() {
                        tracing::debug!(message = env.name(), attempt, error = %e, "retry budget spent; not retrying");
                        return Err(e);
                    }
                    let mut wait = backoff.next_delay();
                    if let Some(left) = env.context().remaining() {
                        if left.is_zero() {
                            return Err(e);
                        }
                        wait = wait.min(left);
                    }
                    tracing::debug!(message = env.name(), attempt, ?wait, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = Retry::new(10).backoff(Duration::from_millis(10), Duration::from_millis(70));
        assert_eq!(r.max_delay_after(1), Duration::from_millis(10));
        assert_eq!(r.max_delay_after(2), Duration::from_millis(20));
        assert_eq!(r.max_delay_after(3), Duration::from_millis(40));
        assert_eq!(r.max_delay_after(4), Duration::from_millis(70));
        assert_eq!(r.max_delay_after(40), Duration::from_millis(70));
    }
}
