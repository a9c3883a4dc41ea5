//! Exponential backoff with full jitter: the one way Catga waits before trying
//! again (retry behavior, duplicates waiting for an attempt, saga steps, leader
//! elections).
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

use std::time::Duration;

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
