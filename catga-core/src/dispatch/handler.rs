//! Handler traits, and closures as handlers.
//!
//! Implement [`RequestHandler`] or [`EventHandler`] with a plain `async fn`:
//!
//! ```
//! use catga_core::{Context, Message, Request, RequestHandler, Result};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Ping;
//! impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
//! impl Request for Ping { type Response = String; }
//!
//! struct PingHandler;
//! impl RequestHandler<Ping> for PingHandler {
//!     async fn handle(&self, _: &Ping, _: &Context) -> Result<String> {
//!         Ok("pong".to_owned())
//!     }
//! }
//!
//! let mediator = catga_core::Catga::builder().request_handler(PingHandler).build()?;
//! # drop(mediator);
//! # Ok::<(), catga_core::Error>(())
//! ```
//!
//! Handlers receive the message by reference: a retry behavior can run the handler
//! again with the same message without cloning it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use futures_util::FutureExt;

use crate::dispatch::behavior::Reply;
use crate::dispatch::context::Context;
use crate::dispatch::erased::ErasedFuture;
use crate::error::Result;
use crate::message::{Event, Request};

/// Handles one request type; exactly one handler per request type in a deployment.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler for request `{R}`",
    label = "does not implement `RequestHandler<{R}>`",
    note = "implement `RequestHandler<{R}>` for `{Self}` with `async fn handle(&self, request: &{R}, ctx: &Context)`, or put `#[handler]` on it"
)]
pub trait RequestHandler<R: Request>: Send + Sync + 'static {
    /// Handles `request` and returns its response.
    fn handle(
        &self,
        request: &R,
        ctx: &Context,
    ) -> impl Future<Output = Result<R::Response>> + Send;

    /// Whether a dispatch must run to its end once started, for behaviors
    /// the handler carries ([`Stacked`](crate::behavior::Stacked)); the
    /// builder runs such a route as it runs one whose behaviors say so.
    /// Default `false`.
    #[doc(hidden)]
    fn runs_to_completion(&self) -> bool {
        false
    }

    /// The types of the behaviors the handler carries
    /// ([`Stacked`](crate::behavior::Stacked)), for the builder's checks.
    /// Default none.
    #[doc(hidden)]
    fn behavior_types(&self) -> Vec<std::any::TypeId> {
        Vec::new()
    }

    /// The handler's Rust type name, for logs and behaviors
    /// ([`Envelope::handler_name`](crate::behavior::Envelope::handler_name)):
    /// a [`Stacked`](crate::behavior::Stacked) handler gives its inner
    /// handler's.
    #[doc(hidden)]
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// Handles one event type; any number of handlers may handle the same event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler for event `{E}`",
    label = "does not implement `EventHandler<{E}>`",
    note = "implement `EventHandler<{E}>` for `{Self}` with `async fn handle(&self, event: &{E}, ctx: &Context)`, or put `#[handler]` on it"
)]
pub trait EventHandler<E: Event>: Send + Sync + 'static {
    /// Reacts to `event`.
    fn handle(&self, event: &E, ctx: &Context) -> impl Future<Output = Result<()>> + Send;
}

/// A closure used as a request or event handler; built by
/// [`CatgaBuilder::request_fn`](crate::CatgaBuilder::request_fn) and
/// [`CatgaBuilder::event_fn`](crate::CatgaBuilder::event_fn).
///
/// The closure gets an owned clone of the message and of the context, because a
/// closure's future cannot borrow its arguments and still be `Send` on stable Rust.
pub struct FnHandler<F, M> {
    f: F,
    _message: PhantomData<fn(M)>,
}

impl<F, M> FnHandler<F, M> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnHandler {
            f,
            _message: PhantomData,
        }
    }
}

impl<F, M> std::fmt::Debug for FnHandler<F, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnHandler")
            .field("closure", &std::any::type_name::<F>())
            .finish()
    }
}

impl<R, F, Fut> RequestHandler<R> for FnHandler<F, R>
where
    R: Request + Clone,
    F: Fn(R, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R::Response>> + Send + 'static,
{
    fn handle(
        &self,
        request: &R,
        ctx: &Context,
    ) -> impl Future<Output = Result<R::Response>> + Send {
        (self.f)(request.clone(), ctx.clone())
    }
}

impl<E, F, Fut> EventHandler<E> for FnHandler<F, E>
where
    E: Event + Clone,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn handle(&self, event: &E, ctx: &Context) -> impl Future<Output = Result<()>> + Send {
        (self.f)(event.clone(), ctx.clone())
    }
}

/// Object-safe form of [`RequestHandler`], made once at registration.
pub(crate) trait DynRequestHandler<R: Request>: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
    ) -> ErasedFuture<'a, Result<R::Response>>;

    /// The same call with the future made in `slot`, where the caller then
    /// polls it. Returned, as by [`call`](DynRequestHandler::call), the
    /// erased future is copied once more and read back at once: `send`
    /// took 45 – 47 ns that way against 39 ns now (benches/dispatch.rs,
    /// the future polled alone; 33 – 35 against 23 – 25 ns awaited).
    fn call_in<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
        slot: Pin<&mut Option<ErasedFuture<'a, Result<R::Response>>>>,
    );

    /// The same call with the response erased, for the end of a pipeline.
    fn call_reply<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
    ) -> ErasedFuture<'a, Result<Reply>>;
}

impl<R: Request, H: RequestHandler<R>> DynRequestHandler<R> for H {
    fn call<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
    ) -> ErasedFuture<'a, Result<R::Response>> {
        ErasedFuture::from_or_box(self.handle(request, ctx))
    }

    fn call_in<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
        mut slot: Pin<&mut Option<ErasedFuture<'a, Result<R::Response>>>>,
    ) {
        slot.set(Some(ErasedFuture::from_or_box(self.handle(request, ctx))));
    }

    fn call_reply<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
    ) -> ErasedFuture<'a, Result<Reply>> {
        ErasedFuture::from_or_box(self.handle(request, ctx).map(|r| r.map(Reply::new)))
    }
}

/// Object-safe form of [`EventHandler`], made once at registration.
pub(crate) trait DynEventHandler<E: Event>: Send + Sync + 'static {
    fn call<'a>(&'a self, event: &'a E, ctx: &'a Context) -> ErasedFuture<'a, Result<()>>;

    /// The same call with the (unit) response erased, for the end of a pipeline.
    fn call_reply<'a>(&'a self, event: &'a E, ctx: &'a Context) -> ErasedFuture<'a, Result<Reply>>;
}

impl<E: Event, H: EventHandler<E>> DynEventHandler<E> for H {
    fn call<'a>(&'a self, event: &'a E, ctx: &'a Context) -> ErasedFuture<'a, Result<()>> {
        ErasedFuture::from_or_box(self.handle(event, ctx))
    }

    fn call_reply<'a>(&'a self, event: &'a E, ctx: &'a Context) -> ErasedFuture<'a, Result<Reply>> {
        ErasedFuture::from_or_box(self.handle(event, ctx).map(|r| r.map(Reply::new)))
    }
}
