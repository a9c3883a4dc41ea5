//! Validation before the handler: invalid messages never reach it.

use std::marker::PhantomData;

use super::{Behavior, Envelope, Next, Reply};
use crate::error::{Error, Result};

/// A message that can check itself.
pub trait Validate {
    /// `Ok(())` when valid; otherwise a description of every problem, for the caller.
    fn validate(&self) -> std::result::Result<(), String>;
}

/// Validates messages of type `M`; register with
/// [`CatgaBuilder::validate`](crate::CatgaBuilder::validate).
pub struct Validation<M> {
    _message: PhantomData<fn(M)>,
}

impl<M> Validation<M> {
    /// Validation of `M`.
    pub fn new() -> Self {
        Validation {
            _message: PhantomData,
        }
    }
}

impl<M> Default for Validation<M> {
    fn default() -> Self {
        Validation::new()
    }
}

impl<M> std::fmt::Debug for Validation<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("message", &std::any::type_name::<M>())
            .finish()
    }
}

impl<M: Validate + Send + Sync + 'static> Behavior for Validation<M> {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        if let Some(message) = env.message::<M>() {
            if let Err(problems) = message.validate() {
                return Err(Error::validation(format!(
                    "`{}` is invalid: {problems}; fix the message, retrying will not help",
                    env.name()
                ))
                .with_message_name(env.name()));
            }
        }
        next.run(env).await
    }
}
