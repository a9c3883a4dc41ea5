//! Pipeline behaviors: code that wraps every dispatch.
//!
//! A [`Behavior`] sees an [`Envelope`] (the message, its name and metadata) and a
//! [`Next`] it calls to go on. Behaviors nest like an onion: the first one added
//! sees the message first and the result last.
//!
//! ```text
//!  send(msg) ─▶ ┌ tracing ─────────────────────────────────┐
//!               │  ┌ retry ──────────────────────────────┐ │
//!               │  │  ┌ timeout ───────────────────────┐ │ │
//!               │  │  │        handler(msg, ctx)       │ │ │
//!               │  │  └────────────────────────────────┘ │ │
//!               │  └─────────────────────────────────────┘ │
//!  result ◀──── └──────────────────────────────────────────┘
//!  builder.behavior(Tracing::new()).behavior(Retry::..).behavior(Timeout::..)
//! ```
//!
//! A behavior is global ([`CatgaBuilder::behavior`](crate::CatgaBuilder::behavior))
//! or scoped to one message type
//! ([`CatgaBuilder::behavior_for`](crate::CatgaBuilder::behavior_for)); both kinds
//! keep the order in which they were added. For events, the pipeline wraps each
//! handler separately, so a retry re-runs only the handler that failed. With no
//! behaviors at all, a dispatch calls the handler directly.
//!
//! The builder's behaviors are chosen at run time, so each one's future is
//! boxed. A [`Stack`] composes behaviors around one request handler when the
//! program is compiled, with no boxing between them; the same behavior types
//! serve both, since a behavior's `next` is generic (`next: impl Next<'a>`).
//!
//! Built-ins, one module each: [`tracing`](mod@self::tracing), [`timeout`],
//! [`retry`], [`validation`], [`concurrency`], [`idempotency`], and `metrics`
//! (with the `metrics` feature).

pub mod concurrency;
pub mod idempotency;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod retry;
mod stack;
pub mod timeout;
pub mod tracing;
pub mod validation;

pub use stack::{Layers, Push, Stack, Stacked};

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::codec::Format;
use crate::dispatch::context::Context;
use crate::dispatch::erased::ErasedFuture;
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageKind;

/// Code that runs around every dispatch it applies to.
///
/// ```
/// use catga_core::behavior::{Behavior, Envelope, Next, Reply};
/// use catga_core::Result;
///
/// struct Audit;
/// impl Behavior for Audit {
///     async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
///         let name = env.name();
///         let result = next.run(env).await;
///         println!("{name}: ok = {}", result.is_ok());
///         result
///     }
/// }
///
/// let mediator = catga_core::Catga::builder().behavior(Audit).build()?;
/// # drop(mediator);
/// # Ok::<(), catga_core::Error>(())
/// ```
pub trait Behavior: Send + Sync + 'static {
    /// Runs around the rest of the pipeline: call `next.run(env)` to go on (zero,
    /// one or several times).
    ///
    /// `next` is generic so that a [`Stack`] composes behaviors with no
    /// boxing between them; a behavior added to the builder gets the
    /// builder's pipeline. Write it once, for both: `next: impl Next<'a>`.
    fn handle<'a>(
        &'a self,
        env: Envelope<'a>,
        next: impl Next<'a>,
    ) -> impl Future<Output = Result<Reply>> + Send + 'a;

    /// Whether a dispatch this behavior wraps must run to its end once started,
    /// whatever happens to the caller. When any behavior of a route says so, the
    /// route runs its pipeline on a task of its own: a caller whose deadline
    /// passes (or who goes away) stops waiting, and the handler still finishes
    /// and its outcome is kept. [`Idempotency`](idempotency::Idempotency) says so.
    /// Default `false`: the pipeline runs on the caller's task and is dropped
    /// with it.
    fn runs_to_completion(&self) -> bool {
        false
    }
}

/// Object-safe form of [`Behavior`], made once at registration.
pub(crate) trait DynBehavior: Send + Sync + 'static {
    fn call<'a>(&'a self, env: Envelope<'a>, next: DynNext<'a>) -> BoxFuture<'a, Result<Reply>>;
    fn detaches(&self) -> bool;
    /// The behavior's own type (to find two idempotency behaviors on a route).
    fn behavior_type(&self) -> std::any::TypeId;
}

impl<B: Behavior> DynBehavior for B {
    fn call<'a>(&'a self, env: Envelope<'a>, next: DynNext<'a>) -> BoxFuture<'a, Result<Reply>> {
        Box::pin(self.handle(env, next))
    }

    fn detaches(&self) -> bool {
        self.runs_to_completion()
    }

    fn behavior_type(&self) -> std::any::TypeId {
        std::any::TypeId::of::<B>()
    }
}

pub(crate) type SharedBehavior = Arc<dyn DynBehavior>;

/// Facts about a registered message type, fixed at build time.
pub(crate) struct MessageInfo {
    pub(crate) name: &'static str,
    pub(crate) kind: MessageKind,
    pub(crate) type_name: &'static str,
    pub(crate) encode_reply: fn(&Reply, Format) -> Result<Vec<u8>>,
    pub(crate) decode_reply: fn(&[u8], Format) -> Result<Reply>,
    pub(crate) partition: fn(&(dyn Any + Send + Sync)) -> Option<String>,
    pub(crate) encode_message: fn(&(dyn Any + Send + Sync), Format) -> Result<Vec<u8>>,
}

impl MessageInfo {
    pub(crate) fn new<M: crate::Message, Resp>(kind: MessageKind) -> Self
    where
        Resp: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        MessageInfo {
            name: M::NAME,
            kind,
            type_name: std::any::type_name::<M>(),
            encode_reply: |reply, format| match reply.downcast_ref::<Resp>() {
                Some(value) => format.encode(value),
                None => Err(Error::new(
                    ErrorKind::Codec,
                    format!(
                        "a behavior replaced the reply with a value that is not a `{}`",
                        std::any::type_name::<Resp>()
                    ),
                )),
            },
            decode_reply: |bytes, format| format.decode::<Resp>(bytes).map(Reply::new),
            partition: |message| message.downcast_ref::<M>().and_then(M::partition),
            encode_message: |message, format| match message.downcast_ref::<M>() {
                Some(m) => format.encode(m),
                None => Err(Error::new(
                    ErrorKind::Codec,
                    "the envelope holds another message type",
                )),
            },
        }
    }
}

/// One message on its way through the pipeline.
#[derive(Clone, Copy)]
pub struct Envelope<'a> {
    message: &'a (dyn Any + Send + Sync),
    ctx: &'a Context,
    info: &'a MessageInfo,
    handler: &'a HandlerId,
}

/// A handler's names: a stable id for stores, its Rust type for logs.
#[derive(Debug, Clone)]
pub(crate) struct HandlerId {
    /// `<message name>` for a request's one handler; `<message name>#<name>` for
    /// an event handler, `<name>` being the name it was registered under or its
    /// position among the event's handlers.
    pub(crate) id: std::borrow::Cow<'static, str>,
    /// Rust type name of the handler (changes with compilers and refactors).
    pub(crate) type_name: &'static str,
}

impl<'a> Envelope<'a> {
    pub(crate) fn new(
        message: &'a (dyn Any + Send + Sync),
        ctx: &'a Context,
        info: &'a MessageInfo,
        handler: &'a HandlerId,
    ) -> Self {
        Envelope {
            message,
            ctx,
            info,
            handler,
        }
    }

    /// Wire name of the message.
    pub fn name(&self) -> &'static str {
        self.info.name
    }

    /// Rust type name of the message (for logs).
    pub fn type_name(&self) -> &'static str {
        self.info.type_name
    }

    /// Request or event.
    pub fn kind(&self) -> MessageKind {
        self.info.kind
    }

    /// Rust type name of the handler the pipeline leads to (for logs: it
    /// changes between compilers and refactors); for events, the one handler
    /// this run of the pipeline wraps.
    pub fn handler_name(&self) -> &'static str {
        self.handler.type_name
    }

    /// Stable id of the handler the pipeline leads to, the same on every copy of
    /// the service whatever compiler built it: the message name for a request's
    /// one handler, `<message name>#<handler name>` for an event handler (its
    /// registered name, or its position among the event's handlers). Stores key
    /// per-handler state by it.
    pub fn handler_id(&self) -> &'a str {
        &self.handler.id
    }

    /// The entity the message is about ([`Message::partition`](crate::Message::partition)).
    pub fn partition(&self) -> Option<String> {
        (self.info.partition)(self.message)
    }

    /// Context (metadata) of the dispatch.
    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    /// The message, if it is a `T`.
    pub fn message<T: 'static>(&self) -> Option<&'a T> {
        self.message.downcast_ref()
    }

    /// Encodes a reply of this message type (used by stores that keep responses).
    pub fn encode_reply(&self, reply: &Reply, format: Format) -> Result<Vec<u8>> {
        (self.info.encode_reply)(reply, format)
    }

    /// The fingerprint of the message's payload (see
    /// [`Context::payload_fingerprint`]): of the bytes it arrived in, or of
    /// its MessagePack encoding when it was sent in this process.
    pub fn payload_fingerprint(&self) -> Result<u64> {
        match self.ctx.payload_fingerprint() {
            Some(fp) => Ok(fp),
            None => (self.info.encode_message)(self.message, Format::MsgPack)
                .map(|bytes| crate::codec::fingerprint(&bytes)),
        }
    }

    /// Decodes a reply of this message type encoded by [`Envelope::encode_reply`].
    pub fn decode_reply(&self, bytes: &[u8], format: Format) -> Result<Reply> {
        (self.info.decode_reply)(bytes, format)
    }
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("name", &self.info.name)
            .field("kind", &self.info.kind)
            .field("handler", &self.handler.id)
            .finish_non_exhaustive()
    }
}

/// The response of a dispatch as it travels back through the pipeline, with its
/// type erased. For events it holds `()`.
pub struct Reply(Box<dyn Any + Send>);

impl Reply {
    /// Wraps a response value.
    pub fn new<T: Send + 'static>(value: T) -> Self {
        Reply(Box::new(value))
    }

    /// The response, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    pub(crate) fn into_inner<T: 'static>(self, name: &str) -> Result<T> {
        self.0.downcast::<T>().map(|b| *b).map_err(|_| {
            Error::new(
                ErrorKind::Handler,
                format!(
                    "a behavior replaced the reply of `{name}` with a value that is not a `{}`",
                    std::any::type_name::<T>()
                ),
            )
            // Not the handler's "no": it may have done its work.
            .with_code("catga.reply_type")
            .with_message_name(name.to_owned())
        })
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply(..)")
    }
}

/// The innermost step of a pipeline: the handler itself.
pub(crate) trait Endpoint: Send + Sync {
    fn call<'a>(&'a self, env: Envelope<'a>) -> ErasedFuture<'a, Result<Reply>>;
}

/// The rest of the pipeline after the current behavior: more behaviors, then
/// the handler.
///
/// `Copy`: a behavior may run it several times (retry) or not at all. The
/// builder's pipeline is one implementation (its behaviors are chosen at
/// run time, and each one's future is boxed); a [`Stack`]'s is another,
/// composed when the program is compiled.
pub trait Next<'a>: Copy + Send + 'a {
    /// Runs the remaining behaviors and the handler.
    fn run(self, env: Envelope<'a>) -> impl Future<Output = Result<Reply>> + Send + 'a;
}

/// The builder's pipeline after a behavior: behaviors chosen at run time.
#[derive(Clone, Copy)]
pub(crate) struct DynNext<'a> {
    rest: &'a [SharedBehavior],
    endpoint: &'a dyn Endpoint,
}

impl<'a> DynNext<'a> {
    pub(crate) fn new(rest: &'a [SharedBehavior], endpoint: &'a dyn Endpoint) -> Self {
        DynNext { rest, endpoint }
    }
}

impl<'a> Next<'a> for DynNext<'a> {
    /// The handler's future (at the end of the pipeline) is held in place
    /// when it is small; a behavior's, which holds the rest of the pipeline,
    /// is boxed.
    fn run(self, env: Envelope<'a>) -> impl Future<Output = Result<Reply>> + Send + 'a {
        match self.rest.split_first() {
            Some((first, rest)) => ErasedFuture::from_or_box(first.call(
                env,
                DynNext {
                    rest,
                    endpoint: self.endpoint,
                },
            )),
            None => self.endpoint.call(env),
        }
    }
}

impl fmt::Debug for DynNext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynNext")
            .field("behaviors_left", &self.rest.len())
            .finish()
    }
}
