//! Message traits: requests (with a response) and events (facts).
//!
//! A message is a plain Rust type with a stable wire [`NAME`](Message::NAME). The
//! name, not the Rust path, travels between peers, so two services in different
//! crates (or languages) agree on it. Keep names dotted and namespaced, e.g.
//! `"orders.CreateOrder"`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Anything that can be dispatched: serialisable, shareable, with a wire name.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable wire name, unique within a deployment.
    const NAME: &'static str;

    /// Whether every handler of this message runs under idempotency, declared
    /// once on the type (`#[catga(idempotent)]` when derived): a peer built
    /// with [`CatgaBuilder::idempotency`](crate::CatgaBuilder::idempotency)
    /// wraps its handlers in the [`Idempotency`](crate::behavior::idempotency::Idempotency)
    /// behavior, once, innermost. Default `false`; the builder's
    /// [`idempotent`](crate::CatgaBuilder::idempotent) declares it for a type
    /// that does not.
    const IDEMPOTENT: bool = false;

    /// The entity this message is about, when it is about one (an order id):
    /// stores that shard their keys put a handler's idempotency record, its
    /// outbox entries and the keys of its [unit of work](crate::store::UnitOfWork)
    /// built for this partition in one shard, so they commit in one atomic step
    /// on a Redis Cluster too. Default `None`: sharded by message id.
    /// `#[catga(partition = field)]` derives it from a field.
    fn partition(&self) -> Option<String> {
        None
    }
}

/// A message with exactly one handler and a response.
///
/// A command that returns nothing is a request whose `Response` is `()`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a request",
    label = "not a request",
    note = "implement `Message` and `Request` for `{Self}` (or derive them), naming its `Response` type"
)]
pub trait Request: Message {
    /// What the handler returns.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Whether this command may be sent durably, declared on the type
    /// (`#[catga(durable)]` when derived): [`Mediator::send_durable`](crate::Mediator::send_durable)
    /// stores it (a JetStream work queue on NATS) and its handling service
    /// takes it when it can, with redelivery and dead letters. Peers that
    /// handle it serve that queue. Default `false`.
    const DURABLE: bool = false;
}

/// A fact delivered to every interested handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "implement `Message` and `Event` for `{Self}` (or derive them)"
)]
pub trait Event: Message {
    /// Whether this event is delivered at least once, declared once on the
    /// type (`#[catga(reliable)]` when derived) so that every service that
    /// publishes or handles it agrees: a transport that can store events
    /// (NATS JetStream) keeps it until each handling service acknowledged
    /// it, and redelivers it after a failure. Default `false`: at most once
    /// (core NATS). In-process delivery is the same either way.
    const RELIABLE: bool = false;
}

/// Whether a dispatch is a request or an event; visible to behaviors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request (or command) with one handler.
    Request,
    /// An event with any number of handlers.
    Event,
}

/// Checks that `name` can be a wire name: dot-separated tokens of printable ASCII
/// without spaces, `*` or `>`, so it fits in a NATS subject (and any other
/// transport's address) unchanged. [`CatgaBuilder::build`](crate::CatgaBuilder::build)
/// checks every registered name with it.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('.').all(|t| !t.is_empty())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "`{name}` is not a valid wire name: use dot-separated printable ASCII without \
                 spaces, `*` or `>`, e.g. \"orders.CreateOrder\""
            ),
        )
        .with_message_name(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn wire_names_are_subject_safe() {
        assert!(validate_name("orders.CreateOrder").is_ok());
        assert!(validate_name("CreateOrder").is_ok());
        for bad in ["", "a..b", "a b", "a.*", "a.>", ".a", "a."] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
