//! Registered routes: a handler, its pipeline and its message facts, typed.
//!
//! Types are erased once, when the mediator is built; a dispatch finds its route
//! with one map lookup and one downcast, then calls through one virtual call.

use std::any::{Any, TypeId};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::time::Instant;

use crate::dispatch::behavior::{
    DynNext, Endpoint, Envelope, HandlerId, MessageInfo, Next, Reply, SharedBehavior,
};
use crate::dispatch::context::Context;
use crate::dispatch::erased::ErasedFuture;
use crate::dispatch::handle::Inner;
use crate::dispatch::handler::{DynEventHandler, DynRequestHandler};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Request};

/// Turns a panic in a handler or behavior into a handler error.
///
/// A combinator rather than an `async fn`: it holds `fut` once, with no copy
/// of its arguments, which keeps the futures of a local dispatch small.
pub(crate) fn guarded<T>(
    name: &'static str,
    handler: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> impl Future<Output = Result<T>> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .map(move |outcome| match outcome {
            Ok(result) => result,
            Err(panic) => Err(panic_error(name, handler, &*panic)),
        })
}

/// The error a caught panic becomes.
fn panic_error(name: &'static str, handler: &'static str, panic: &(dyn Any + Send)) -> Error {
    let what = crate::error::panic_message(panic);
    tracing::error!(message = name, handler, panic = %what, "handler panicked");
    Error::handler(
        "catga.panic",
        format!("handler `{handler}` panicked: {what}; the peer keeps running, fix the handler"),
    )
    .with_message_name(name)
}

/// Runs `fut` within the dispatch deadline, if there is one.
pub(crate) async fn within_deadline<T>(
    name: &'static str,
    ctx: &Context,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match ctx.deadline() {
        None => fut.await,
        Some(deadline) => {
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(result) => result,
                Err(_) => Err(Error::timeout(name, started.elapsed())),
            }
        }
    }
}

pub(crate) fn internal(name: &'static str, what: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("internal routing error for `{name}`: {what}; please report this as a Catga bug"),
    )
    .with_message_name(name)
}

/// A behavior with the message type it is limited to (`None` = every message).
pub(crate) type ScopedBehavior = (Option<TypeId>, SharedBehavior);

pub(crate) fn pipeline_for(behaviors: &[ScopedBehavior], ty: TypeId) -> Box<[SharedBehavior]> {
    behaviors
        .iter()
        .filter(|(scope, _)| scope.is_none_or(|s| s == ty))
        .map(|(_, b)| b.clone())
        .collect()
}

/// Whether a pipeline must run to its end once started (see
/// [`Behavior::runs_to_completion`](crate::dispatch::behavior::Behavior::runs_to_completion)).
pub(crate) fn detaches(pipeline: &[SharedBehavior]) -> bool {
    pipeline.iter().any(|b| b.detaches())
}

/// The runtime a pipeline that must run to completion is spawned on: `None`
/// when it need not, or outside a runtime (then the caller's task runs it).
fn detached_runtime(detached: bool) -> Option<tokio::runtime::Handle> {
    detached
        .then(tokio::runtime::Handle::try_current)
        .and_then(std::result::Result::ok)
}

/// Waits for a detached dispatch until the caller's deadline; the task runs on
/// after the caller stops waiting.
async fn wait_detached<T>(
    name: &'static str,
    handler: &'static str,
    deadline: Option<Instant>,
    task: tokio::task::JoinHandle<T>,
) -> Result<T> {
    let started = Instant::now();
    let joined = match deadline {
        None => task.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, task).await {
            Ok(joined) => joined,
            Err(_) => return Err(Error::timeout(name, started.elapsed())),
        },
    };
    joined.map_err(|e| {
        if e.is_panic() {
            panic_error(name, handler, &*e.into_panic())
        } else {
            Error::new(
                ErrorKind::Cancelled,
                format!("`{name}` was cancelled: the runtime is shutting down"),
            )
            .with_message_name(name)
        }
    })
}

/// Rejects a message sent by a leader whose term is over: its fence (header
/// `Catga-Fence`) is below the lock's current one. The lookup's future is
/// boxed, and made only for a message that carries a fence, so dispatches
/// without one carry no room for it.
pub(crate) async fn check_fence(name: &'static str, ctx: &Context) -> Result<()> {
    match ctx.headers().get(crate::metadata::FENCE_HEADER) {
        None => Ok(()),
        Some(header) => Box::pin(check_fence_now(name, ctx, header)).await,
    }
}

async fn check_fence_now(name: &'static str, ctx: &Context, header: &str) -> Result<()> {
    let fence =
        crate::metadata::Fence::from_header(header).map_err(|e| e.with_message_name(name))?;
    if ctx.mediator().holds_term(&fence.name, fence.token) {
        // Sent in a term this peer still holds: nothing newer can exist.
        return Ok(());
    }
    let inner = &ctx.mediator().inner;
    if inner.transport.is_some()
        && inner
            .unshared_fences
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::error!(
            message = name,
            lock = %fence.name,
            "a message from the leader of `{}` carries a fence, but this peer has no lock store \
             (`.lock_store(..)`), so fences are checked against its own, empty one and always \
             pass: a deposed leader's commands would run here. Configure the leaders' lock \
             store on every peer that receives their messages",
            fence.name
        );
    }
    let current = ctx
        .mediator()
        .fence_store()
        .current_fence(&fence.name)
        .await?;
    if fence.token < current {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "`{name}` was sent by the leader of `{}` with fence {}, but fence {current} \
                 leads now: the sender's term is over, so the message is refused",
                fence.name, fence.token
            ),
        )
        .with_code("catga.stale_fence")
        .with_message_name(name));
    }
    Ok(())
}

/// The route of one request type.
pub(crate) struct RequestRoute<R: Request> {
    pub(crate) handler: Box<dyn DynRequestHandler<R>>,
    pub(crate) id: HandlerId,
    pub(crate) pipeline: Box<[SharedBehavior]>,
    pub(crate) info: MessageInfo,
    /// Send through the transport even though this peer has the handler.
    pub(crate) remote: bool,
    /// The pipeline runs on a task of its own, to its end.
    pub(crate) detached: bool,
}

impl<R: Request> RequestRoute<R> {
    /// Runs the pipeline and the handler, without the deadline.
    async fn through_pipeline(&self, request: &R, ctx: &Context) -> Result<R::Response> {
        let env = Envelope::new(request, ctx, &self.info, &self.id);
        guarded(
            R::NAME,
            self.id.type_name,
            DynNext::new(&self.pipeline, self).run(env),
        )
        .await?
        .into_inner::<R::Response>(R::NAME)
    }

    /// Runs the pipeline, if any, and the handler on the caller's task, with
    /// no deadline and no fence check: what every local dispatch comes down
    /// to (with no behaviors, one virtual call and the handler's future in
    /// place). A plain function over an `Either`, not an `async fn`: no
    /// state machine of its own on the hot path.
    #[inline]
    pub(crate) fn run_here<'a>(
        &'a self,
        request: &'a R,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<R::Response>> + Send + 'a {
        if self.pipeline.is_empty() {
            let call = self.handler.call(request, ctx);
            Either::Left(guarded(R::NAME, self.id.type_name, call))
        } else {
            Either::Right(self.through_pipeline(request, ctx))
        }
    }

    /// Runs the handler within the caller's deadline, on the caller's task.
    pub(crate) async fn dispatch(&self, request: &R, ctx: &Context) -> Result<R::Response> {
        let run = async {
            check_fence(R::NAME, ctx).await?;
            self.run_here(request, ctx).await
        };
        within_deadline(R::NAME, ctx, run).await
    }

    /// Runs the handler for a caller that waits for itself (a remote peer, with
    /// its own deadline): a route that must run to completion runs on this
    /// task without being cut off at the deadline, so it stays within the
    /// transport's in-flight limit; any other like [`RequestRoute::dispatch`].
    pub(crate) async fn dispatch_inbound(&self, request: &R, ctx: &Context) -> Result<R::Response> {
        if !self.detached {
            return self.dispatch(request, ctx).await;
        }
        self.run_to_end(request, ctx).await
    }

    /// The fence check and the pipeline, with no deadline: how a route that
    /// must run to completion runs, on whichever task.
    async fn run_to_end(&self, request: &R, ctx: &Context) -> Result<R::Response> {
        check_fence(R::NAME, ctx).await?;
        self.run_here(request, ctx).await
    }

    /// Runs the handler of a request this dispatch owns: on a task of its own
    /// when the route must run to completion (the caller waits until its
    /// deadline at most), otherwise like [`RequestRoute::dispatch`].
    pub(crate) async fn dispatch_owned(&self, request: R, ctx: Context) -> Result<R::Response> {
        let Some(runtime) = detached_runtime(self.detached) else {
            return self.dispatch(&request, &ctx).await;
        };
        let deadline = ctx.deadline();
        let task = runtime.spawn(async move {
            let mediator = ctx.mediator().clone();
            request_route::<R>(&mediator.inner)?
                .run_to_end(&request, &ctx)
                .await
        });
        wait_detached(R::NAME, self.id.type_name, deadline, task).await?
    }
}

impl<R: Request> Endpoint for RequestRoute<R> {
    fn call<'a>(&'a self, env: Envelope<'a>) -> ErasedFuture<'a, Result<Reply>> {
        match env.message::<R>() {
            Some(request) => self.handler.call_reply(request, env.context()),
            None => ErasedFuture::from(std::future::ready(Err(internal(
                R::NAME,
                "envelope holds another message type",
            )))),
        }
    }
}

/// One handler of an event type, with its own pipeline.
pub(crate) struct EventSlot<E: Event> {
    pub(crate) handler: Box<dyn DynEventHandler<E>>,
    pub(crate) id: HandlerId,
    pub(crate) pipeline: Box<[SharedBehavior]>,
}

impl<E: Event> Endpoint for EventSlot<E> {
    fn call<'a>(&'a self, env: Envelope<'a>) -> ErasedFuture<'a, Result<Reply>> {
        match env.message::<E>() {
            Some(event) => self.handler.call_reply(event, env.context()),
            None => ErasedFuture::from(std::future::ready(Err(internal(
                E::NAME,
                "envelope holds another message type",
            )))),
        }
    }
}

impl<E: Event> EventSlot<E> {
    /// The handler's future, through its pipeline when it has one.
    fn start<'a>(
        &'a self,
        event: &'a E,
        ctx: &'a Context,
        info: &'a MessageInfo,
    ) -> ErasedFuture<'a, Result<()>> {
        if self.pipeline.is_empty() {
            return self.handler.call(event, ctx);
        }
        // Boxed inside: the pipeline's future holds a context of its own.
        ErasedFuture::from_or_box(async move {
            // Each handler's pipeline gets its own context, so what one
            // handler's behaviors hold back (outbox events) stays its own.
            let own = ctx.clone();
            let env = Envelope::new(event, &own, info, &self.id);
            DynNext::new(&self.pipeline, self).run(env).await.map(drop)
        })
    }
}

pin_project_lite::pin_project! {
    /// Runs the handlers of one event concurrently on the caller's task and
    /// collects their failures in registration order. Each handler is
    /// started and polled once on the first poll. The first one that waits
    /// stays where it is, in this future; only further ones that wait are
    /// boxed. A publish whose handlers finish at once (or only one waits)
    /// allocates nothing here.
    struct JoinFailures<'a, E>
    where
        E: Event,
    {
        name: &'static str,
        // Handlers not started yet (all of them until the first poll).
        unstarted: &'a [EventSlot<E>],
        // Registration index of `unstarted`'s first handler.
        next: usize,
        event: &'a E,
        ctx: &'a Context,
        info: &'a MessageInfo,
        // A handler that waits, polled in place, with its index and name.
        #[pin]
        in_place: Option<Guarded<'a>>,
        in_place_at: (usize, &'static str),
        // Further handlers that wait.
        boxed: Vec<(usize, Pin<Box<Guarded<'a>>>, &'static str)>,
        failures: Vec<(usize, Error)>,
    }
}

type Guarded<'a> =
    futures_util::future::CatchUnwind<AssertUnwindSafe<ErasedFuture<'a, Result<()>>>>;

/// Notes a handler's outcome among `failures` (a panic becomes an error).
fn record_outcome(
    failures: &mut Vec<(usize, Error)>,
    name: &'static str,
    (i, handler): (usize, &'static str),
    outcome: std::thread::Result<Result<()>>,
) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push((i, e)),
        Err(panic) => failures.push((i, panic_error(name, handler, &*panic))),
    }
}

impl<E: Event> Future for JoinFailures<'_, E> {
    type Output = Vec<Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Vec<Error>> {
        let mut this = self.project();
        let name = *this.name;
        let failures = &mut *this.failures;
        this.boxed
            .retain_mut(|(i, fut, handler)| match fut.as_mut().poll(cx) {
                Poll::Ready(outcome) => {
                    record_outcome(failures, name, (*i, handler), outcome);
                    false
                }
                Poll::Pending => true,
            });
        // The handler in place; while the place is free, the next one there.
        loop {
            if let Some(fut) = this.in_place.as_mut().as_pin_mut() {
                match fut.poll(cx) {
                    Poll::Ready(outcome) => {
                        record_outcome(failures, name, *this.in_place_at, outcome);
                        this.in_place.set(None);
                    }
                    Poll::Pending => break,
                }
            }
            let Some((slot, rest)) = this.unstarted.split_first() else {
                break;
            };
            *this.unstarted = rest;
            *this.in_place_at = (*this.next, slot.id.type_name);
            *this.next += 1;
            let fut = slot.start(this.event, this.ctx, this.info);
            this.in_place
                .set(Some(AssertUnwindSafe(fut).catch_unwind()));
        }
        // The place is taken: the rest start boxed.
        for slot in std::mem::take(this.unstarted) {
            let at = (*this.next, slot.id.type_name);
            *this.next += 1;
            let fut = slot.start(this.event, this.ctx, this.info);
            let mut fut = Box::pin(AssertUnwindSafe(fut).catch_unwind());
            match fut.as_mut().poll(cx) {
                Poll::Ready(outcome) => record_outcome(failures, name, at, outcome),
                Poll::Pending => this.boxed.push((at.0, fut, at.1)),
            }
        }
        if this.in_place.is_some() || !this.boxed.is_empty() {
            return Poll::Pending;
        }
        if failures.is_empty() {
            return Poll::Ready(Vec::new());
        }
        let mut failures = std::mem::take(failures);
        failures.sort_by_key(|(i, _)| *i);
        Poll::Ready(failures.into_iter().map(|(_, e)| e).collect())
    }
}

/// Every local handler of one event type.
pub(crate) struct EventRoute<E: Event> {
    pub(crate) slots: Box<[EventSlot<E>]>,
    pub(crate) info: MessageInfo,
    /// Some handler's pipeline must run to its end: the handlers run on a task
    /// of their own.
    pub(crate) detached: bool,
}

impl<E: Event> EventRoute<E> {
    /// Runs every handler concurrently and returns the failures, in registration
    /// order (empty when all succeeded).
    pub(crate) async fn dispatch(&self, event: &E, ctx: &Context) -> Vec<Error> {
        if ctx.deadline().is_none() && ctx.headers().is_empty() {
            return self.run_all(event, ctx).await;
        }
        let all = async {
            check_fence(E::NAME, ctx).await?;
            Ok(self.run_all(event, ctx).await)
        };
        match Box::pin(within_deadline(E::NAME, ctx, all)).await {
            Ok(failures) => failures,
            Err(timeout) => vec![timeout],
        }
    }

    /// Runs the handlers for a transport (see [`RequestRoute::dispatch_inbound`]).
    pub(crate) async fn dispatch_inbound(&self, event: &E, ctx: &Context) -> Vec<Error> {
        if !self.detached {
            return self.dispatch(event, ctx).await;
        }
        self.run_to_end(event, ctx).await
    }

    /// The fence check and the handlers, with no deadline (see
    /// [`RequestRoute::run_to_end`]).
    async fn run_to_end(&self, event: &E, ctx: &Context) -> Vec<Error> {
        match check_fence(E::NAME, ctx).await {
            Ok(()) => self.run_all(event, ctx).await,
            Err(e) => vec![e],
        }
    }

    /// Like [`EventRoute::dispatch`] for an event this dispatch shares: on a task
    /// of its own when a handler must run to completion.
    pub(crate) async fn dispatch_shared(&self, event: Arc<E>, ctx: Context) -> Vec<Error> {
        let Some(runtime) = detached_runtime(self.detached) else {
            return self.dispatch(&event, &ctx).await;
        };
        let deadline = ctx.deadline();
        let task = runtime.spawn(async move {
            let mediator = ctx.mediator().clone();
            match event_route::<E>(&mediator.inner) {
                Some(Ok(route)) => route.run_to_end(&event, &ctx).await,
                Some(Err(e)) => vec![e],
                None => Vec::new(),
            }
        });
        wait_detached(E::NAME, "event handlers", deadline, task)
            .await
            .unwrap_or_else(|e| vec![e])
    }

    /// Runs every handler on the caller's task, with no deadline or fence
    /// check (the caller knows there is none).
    pub(crate) async fn run_all(&self, event: &E, ctx: &Context) -> Vec<Error> {
        match &*self.slots {
            [] => Vec::new(),
            [one] => guarded(E::NAME, one.id.type_name, one.start(event, ctx, &self.info))
                .await
                .err()
                .into_iter()
                .collect(),
            many => {
                JoinFailures {
                    name: E::NAME,
                    unstarted: many,
                    next: 0,
                    event,
                    ctx,
                    info: &self.info,
                    in_place: None,
                    in_place_at: (0, ""),
                    boxed: Vec::new(),
                    failures: Vec::new(),
                }
                .await
            }
        }
    }
}

/// Downcasts a route stored as `dyn Any` back to its type.
pub(crate) fn downcast_route<'a, T: 'static>(
    route: &'a (dyn Any + Send + Sync),
    name: &'static str,
) -> Result<&'a T> {
    route
        .downcast_ref::<T>()
        .ok_or_else(|| internal(name, "route stored under the wrong type"))
}

/// The local route of request `R`.
pub(crate) fn request_route<R: Request>(inner: &Inner) -> Result<&RequestRoute<R>> {
    let route = inner
        .requests
        .get(&TypeId::of::<R>())
        .ok_or_else(|| Error::no_handler(R::NAME, "request"))?;
    downcast_route::<RequestRoute<R>>(&**route, R::NAME)
}

/// The local handlers of event `E`, if any.
pub(crate) fn event_route<E: Event>(inner: &Inner) -> Option<Result<&EventRoute<E>>> {
    inner
        .events
        .get(&TypeId::of::<E>())
        .map(|route| downcast_route::<EventRoute<E>>(&**route, E::NAME))
}
