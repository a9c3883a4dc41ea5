//! A `tracing` span around every dispatch.

use tracing::Instrument;

use super::{Behavior, Envelope, Next, Reply};
use crate::error::Result;

/// Opens an `info` span `catga.dispatch` with the message name, kind, id and
/// correlation id, and logs failures at `warn`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing {
    _private: (),
}

impl Tracing {
    /// The tracing behavior.
    pub fn new() -> Self {
        Tracing::default()
    }
}

impl Behavior for Tracing {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        let ctx = env.context();
        let span = tracing::info_span!(
            "catga.dispatch",
            message = env.name(),
            kind = ?env.kind(),
            handler = env.handler_name(),
            message_id = %ctx.message_id(),
            correlation_id = %ctx.correlation_id(),
        );
        async move {
            let result = next.run(env).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, retryable = e.is_retryable(), "dispatch failed");
            }
            result
        }
        .instrument(span)
        .await
    }
}
