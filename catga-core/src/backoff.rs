//! Trying again without amplifying load: exponential backoff with full
//! jitter, the one way Catga waits before trying again (retry behavior,
//! duplicates waiting for an attempt, saga steps, leader elections, relay and
//! reconnects), and a [`RetryBudget`] per peer that bounds how many retries
//! there are at all.
//!
//! The wait before attempt *n + 1* is drawn uniformly from
//! `[0, min(max, initial · 2ⁿ⁻¹)]` ("full jitter", as in the AWS architecture
//! blog's analysis): peers that failed together do not retry together.
//!
//! ```
//! use std::time::Duration;
//! use catga_core::backoff::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
//! for _ in 0..10 {
//!     assert!(b.next_delay() <= Duration::from_millis(80));
//! }
//! assert_eq!(b.attempts(), 10);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Delays for successive attempts: exponential, capped, fully jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// Starts at `initial` (the cap of the first delay) and doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// The cap of the delay after `attempt` failed attempts (counting from 1).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniform in `[0, cap]`; counts an attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.cap(self.attempts).mul_f64(fastrand::f64())
    }

    /// Delays handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// How many retries a peer may make, as a share of its first attempts (the
/// retry budget of Finagle and gRPC, tower's `TpsBudget`): when a dependency
/// fails, retries add at most that share of load instead of multiplying it
/// at every layer.
///
/// Every first attempt that may be retried deposits; every retry withdraws,
/// and is not made when the budget is empty (the last error is returned). A
/// minimum number of retries per second is always allowed, for peers that
/// send little. One budget serves the whole peer: the [`Retry`] behavior, a
/// remote send answered `overloaded`, and saga steps (which, having to reach
/// an answer, wait a full backoff instead of giving up).
///
/// [`Retry`]: crate::behavior::retry::Retry
///
/// ```
/// use catga_core::RetryBudget;
///
/// let budget = RetryBudget::new(0.1, 0);
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw() && budget.withdraw());
/// assert!(!budget.withdraw(), "20 first attempts buy 2 retries at 10 %");
/// assert_eq!(budget.denied(), 1);
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    budget: TpsBudget,
    ratio: f32,
    min_per_sec: u32,
    denied: AtomicU64,
}

impl RetryBudget {
    /// Retries of up to `ratio` of first attempts over the last 10 s (0.2:
    /// one retry per five first attempts), plus `min_per_sec` retries per
    /// second in any case. A ratio up to 1 counts as one retry per whole
    /// number of first attempts (0.3 as 1 per 3); it is kept within 0 to
    /// 1000, and `min_per_sec` within a million.
    pub fn new(ratio: f32, min_per_sec: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let min_per_sec = min_per_sec.min(1_000_000);
        RetryBudget {
            inner: Arc::new(BudgetInner {
                budget: TpsBudget::new(Duration::from_secs(10), min_per_sec, ratio),
                ratio,
                min_per_sec,
                denied: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        self.inner.budget.deposit();
    }

    /// Takes a retry from the budget: `false` (and counted) when it is empty.
    pub fn withdraw(&self) -> bool {
        let granted = self.inner.budget.withdraw();
        if !granted {
            self.inner.denied.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// Retries refused since the peer started (export it as a metric).
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Ordering::Relaxed)
    }
}

impl Default for RetryBudget {
    /// 20 % of first attempts, at least 10 retries per second.
    fn default() -> Self {
        RetryBudget::new(0.2, 10)
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.inner.ratio)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("denied", &self.denied())
            .finish()
    }
}

/// Runs `attempt` until it succeeds, fails with an error `retry` does not
/// accept, or `attempts` run out, waiting `backoff`'s next delay between
/// attempts. For work kept only in this process (a durable command with no
/// store to keep it): what is given up is logged, there is nowhere to
/// dead-letter it.
pub(crate) async fn retry_in_process<Fut>(
    command: &str,
    attempts: u32,
    mut backoff: Backoff,
    retry: impl Fn(&crate::Error) -> bool,
    mut attempt: impl FnMut() -> Fut,
) where
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    for n in 1..=attempts {
        match attempt().await {
            Ok(()) => return,
            Err(e) if retry(&e) && n < attempts => {
                tracing::debug!(command, attempt = n, error = %e, "durable command not handled yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::error!(command, attempt = n, error = %e, "durable command given up (kept in memory only, nowhere to dead-letter it)");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_and_stop_at_the_maximum() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(70));
        assert_eq!(b.cap(1), Duration::from_millis(10));
        assert_eq!(b.cap(2), Duration::from_millis(20));
        assert_eq!(b.cap(3), Duration::from_millis(40));
        assert_eq!(b.cap(4), Duration::from_millis(70));
        assert_eq!(b.cap(400), Duration::from_millis(70));
    }

    #[test]
    fn delays_are_jittered_below_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(100));
        let delays: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jittered, not fixed: {delays:?}");
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}
