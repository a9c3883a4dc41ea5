//! [`Stack`]: behaviors composed around one request handler when the program
//! is compiled, with no boxing between them.
//!
//! The builder's behaviors ([`CatgaBuilder::behavior`](crate::CatgaBuilder::behavior))
//! are chosen at run time, so each one's future is boxed and reached through
//! a virtual call. A stack is a type: `Stack::new().with(A).with(B).around(h)`
//! is a request handler whose whole pipeline is one future, known to the
//! compiler. Use it for a hot route whose behaviors are fixed; the same
//! behavior types work in both places.

use std::any::TypeId;
use std::future::Future;
use std::marker::PhantomData;

use super::{Behavior, Envelope, HandlerId, MessageInfo, Next, Reply};
use crate::dispatch::context::Context;
use crate::dispatch::handler::RequestHandler;
use crate::dispatch::route::internal;
use crate::error::Result;
use crate::message::{MessageKind, Request};

/// Behaviors around one request handler, composed when the program is
/// compiled: no boxed future or virtual call between them.
///
/// Behaviors nest in the order added, as on the builder: the first added
/// sees the message first and the result last. [`Stack::around`] gives a
/// request handler ([`Stacked`]) to register like any other; builder-wide
/// behaviors, if any, run outside it.
///
/// ```
/// use catga_core::behavior::{Behavior, Envelope, Next, Reply, Stack};
/// use catga_core::{Catga, Context, Message, Request, RequestHandler, Result};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Double(i64);
/// impl Message for Double { const NAME: &'static str = "demo.Double"; }
/// impl Request for Double { type Response = i64; }
///
/// struct Doubler;
/// impl RequestHandler<Double> for Doubler {
///     async fn handle(&self, d: &Double, _: &Context) -> Result<i64> { Ok(d.0 * 2) }
/// }
///
/// struct Audit;
/// impl Behavior for Audit {
///     async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
///         let result = next.run(env).await;
///         println!("{}: ok = {}", env.name(), result.is_ok());
///         result
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let mediator = Catga::builder()
///     .request_handler(Stack::new().with(Audit).around(Doubler))
///     .build()?;
/// assert_eq!(mediator.send(Double(21)).await?, 42);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<L = ()> {
    layers: L,
}

impl Stack {
    /// No behaviors yet.
    pub fn new() -> Self {
        Stack { layers: () }
    }
}

impl<L> Stack<L> {
    /// Adds `behavior` inside the ones added before.
    pub fn with<B: Behavior>(self, behavior: B) -> Stack<L::Out>
    where
        L: Push<B>,
    {
        Stack {
            layers: self.layers.push(behavior),
        }
    }

    /// `handler` with these behaviors around it.
    pub fn around<H>(self, handler: H) -> Stacked<L, H> {
        Stacked {
            layers: self.layers,
            handler,
        }
    }
}

/// A request handler with a [`Stack`] of behaviors around it; itself a
/// request handler of every request `H` handles.
///
/// Register it as it is: the builder asks it whether a behavior in it runs
/// to completion (the route then runs on a task of its own) and which
/// behaviors it holds (two idempotency behaviors on one route are refused).
/// A handler of your own that wraps a `Stacked` answers neither, unless it
/// forwards `RequestHandler::runs_to_completion` and `behavior_types`.
#[derive(Debug, Clone)]
pub struct Stacked<L, H> {
    layers: L,
    handler: H,
}

impl<R, L, H> RequestHandler<R> for Stacked<L, H>
where
    R: Request,
    L: Layers,
    H: RequestHandler<R>,
{
    async fn handle(&self, request: &R, ctx: &Context) -> Result<R::Response> {
        // What the builder fixes for a route, made here: a stack knows its
        // request type only when it handles one. A request's one handler is
        // identified by the message name, as on the route.
        let info = MessageInfo::new::<R, R::Response>(MessageKind::Request);
        let id = HandlerId {
            id: R::NAME.into(),
            type_name: std::any::type_name::<H>(),
        };
        let env = Envelope::new(request, ctx, &info, &id);
        let end = Handler {
            handler: &self.handler,
            request: PhantomData,
        };
        self.layers
            .run(env, end)
            .await?
            .into_inner::<R::Response>(R::NAME)
    }

    fn runs_to_completion(&self) -> bool {
        self.layers.runs_to_completion() || self.handler.runs_to_completion()
    }

    fn behavior_types(&self) -> Vec<TypeId> {
        let mut types = self.handler.behavior_types();
        self.layers.behavior_types(&mut types);
        types
    }

    fn type_name(&self) -> &'static str {
        self.handler.type_name()
    }
}

/// The end of a stack: the handler of `R`.
struct Handler<'a, H, R> {
    handler: &'a H,
    request: PhantomData<fn(R)>,
}

impl<H, R> Clone for Handler<'_, H, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H, R> Copy for Handler<'_, H, R> {}

impl<'a, H: RequestHandler<R>, R: Request> Next<'a> for Handler<'a, H, R> {
    async fn run(self, env: Envelope<'a>) -> Result<Reply> {
        let Some(request) = env.message::<R>() else {
            // A behavior cannot change the message type: never seen.
            return Err(internal(R::NAME, "envelope holds another message type"));
        };
        self.handler
            .handle(request, env.context())
            .await
            .map(Reply::new)
    }
}

/// Seals [`Layers`] and [`Push`]: implemented here only.
mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<B, Rest> Sealed for (B, Rest) {}
}

/// The behaviors of a [`Stack`], as a type: `()` for none, `(B, Rest)` for
/// behavior `B` around the rest. Sealed: implemented for those only.
pub trait Layers: sealed::Sealed + Send + Sync + 'static {
    /// Runs the behaviors around `end`.
    fn run<'a, N: Next<'a>>(
        &'a self,
        env: Envelope<'a>,
        end: N,
    ) -> impl Future<Output = Result<Reply>> + Send + 'a;

    /// Whether one of the behaviors runs to completion
    /// ([`Behavior::runs_to_completion`]).
    fn runs_to_completion(&self) -> bool;

    /// The behaviors' types, outermost first.
    fn behavior_types(&self, types: &mut Vec<TypeId>);
}

impl Layers for () {
    fn run<'a, N: Next<'a>>(
        &'a self,
        env: Envelope<'a>,
        end: N,
    ) -> impl Future<Output = Result<Reply>> + Send + 'a {
        end.run(env)
    }

    fn runs_to_completion(&self) -> bool {
        false
    }

    fn behavior_types(&self, _: &mut Vec<TypeId>) {}
}

impl<B: Behavior, Rest: Layers> Layers for (B, Rest) {
    fn run<'a, N: Next<'a>>(
        &'a self,
        env: Envelope<'a>,
        end: N,
    ) -> impl Future<Output = Result<Reply>> + Send + 'a {
        self.0.handle(env, Inner { rest: &self.1, end })
    }

    fn runs_to_completion(&self) -> bool {
        self.0.runs_to_completion() || self.1.runs_to_completion()
    }

    fn behavior_types(&self, types: &mut Vec<TypeId>) {
        types.push(TypeId::of::<B>());
        self.1.behavior_types(types);
    }
}

/// What a stacked behavior's `next` is: the behaviors inside it, then the end.
struct Inner<'a, Rest, N> {
    rest: &'a Rest,
    end: N,
}

impl<Rest, N: Copy> Clone for Inner<'_, Rest, N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Rest, N: Copy> Copy for Inner<'_, Rest, N> {}

impl<'a, Rest: Layers, N: Next<'a>> Next<'a> for Inner<'a, Rest, N> {
    fn run(self, env: Envelope<'a>) -> impl Future<Output = Result<Reply>> + Send + 'a {
        self.rest.run(env, self.end)
    }
}

/// Appends a behavior at the inner end of a [`Stack`]'s layers (the type
/// behind [`Stack::with`]). Sealed: implemented for [`Layers`] types only.
pub trait Push<B>: sealed::Sealed {
    /// The layers with `B` innermost.
    type Out;

    /// Appends `behavior`.
    fn push(self, behavior: B) -> Self::Out;
}

impl<B> Push<B> for () {
    type Out = (B, ());

    fn push(self, behavior: B) -> (B, ()) {
        (behavior, ())
    }
}

impl<X, Rest: Push<B>, B> Push<B> for (X, Rest) {
    type Out = (X, Rest::Out);

    fn push(self, behavior: B) -> Self::Out {
        (self.0, self.1.push(behavior))
    }
}
