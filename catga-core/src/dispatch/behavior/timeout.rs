//! A default deadline for messages sent without one.

use std::time::Duration;

use super::{Behavior, Envelope, Next, Reply};
use crate::error::{Error, Result};

/// Fails a dispatch with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) after
/// `duration`, or earlier when the caller's deadline is sooner.
///
/// A caller's own deadline (`Metadata::with_timeout`) is always enforced, with or
/// without this behavior; this behavior adds a limit for every dispatch it wraps.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    duration: Duration,
}

impl Timeout {
    /// Limits each dispatch to `duration`.
    pub fn new(duration: Duration) -> Self {
        Timeout { duration }
    }
}

impl Behavior for Timeout {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let limit = env
            .context()
            .remaining()
            .map_or(self.duration, |r| r.min(self.duration));
        match tokio::time::timeout(limit, next.run(env)).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(env.name(), limit)),
        }
    }
}
