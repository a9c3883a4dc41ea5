//! The way in from a transport: a request or event of some wire name is
//! decoded as its type and runs through its local route.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::dispatch::context::Context;
use crate::dispatch::handle::{Inner, Mediator};
use crate::dispatch::route::{event_route, request_route};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Event, Request};
use crate::transport::{Inbound, PeerSpec, WireMessage, WireReply};

/// What a transport needs to serve `mediator`: the names it takes and the
/// way in. The way in holds the mediator weakly: a transport never keeps a
/// dropped mediator alive.
pub(crate) fn serving(mediator: &Mediator) -> (PeerSpec, Arc<dyn Inbound>) {
    let inner = &mediator.inner;
    let mut requests: Vec<_> = inner.inbound_requests.keys().copied().collect();
    let mut events: Vec<_> = inner.inbound_events.keys().copied().collect();
    requests.sort_unstable();
    events.sort_unstable();
    let spec = PeerSpec {
        service: inner.service.clone(),
        peer_id: inner.peer_id,
        requests,
        events,
        reliable_events: inner.reliable_events.clone(),
        durable_requests: inner.durable_requests.clone(),
    };
    let inbound = Arc::new(MediatorInbound {
        mediator: Arc::downgrade(inner),
    });
    (spec, inbound)
}

/// The mediator as seen by a transport; weak, so a transport never keeps a
/// dropped mediator alive.
struct MediatorInbound {
    mediator: Weak<Inner>,
}

impl MediatorInbound {
    fn mediator(&self) -> Result<Mediator> {
        self.mediator
            .upgrade()
            .map(|inner| Mediator { inner })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Cancelled,
                    "this peer's mediator was dropped; the message was not handled",
                )
            })
    }
}

/// Checks the deadline of an incoming message: past it, the message is not
/// handled (its caller has stopped waiting); a budget over the peer's cap is
/// cut to the cap (a client cannot pin this peer's capacity for longer).
fn admit_deadline(message: &mut WireMessage, cap: Duration) -> Result<()> {
    match &mut message.timeout {
        Some(left) if left.is_zero() => Err(Error::expired(message.name.clone())),
        Some(left) => {
            *left = (*left).min(cap);
            Ok(())
        }
        None => Ok(()),
    }
}

impl Inbound for MediatorInbound {
    fn request(&self, mut message: WireMessage) -> BoxFuture<'static, Result<WireReply>> {
        let mediator = match self.mediator() {
            Ok(m) => m,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // No timeout: a stored command, worth handling whenever it is
        // delivered (a transport that serves live requests without one sets
        // its default when it receives them).
        if let Err(e) = admit_deadline(&mut message, mediator.inner.max_inbound_timeout) {
            return Box::pin(std::future::ready(Err(e)));
        }
        match mediator.inner.inbound_requests.get(&*message.name) {
            Some(handle) => handle(mediator.clone(), message),
            None => Box::pin(std::future::ready(Err(unknown_name(
                &message.name,
                "request",
            )))),
        }
    }

    fn event(&self, mut message: WireMessage) -> BoxFuture<'static, Result<()>> {
        let mediator = match self.mediator() {
            Ok(m) => m,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if let Err(e) = admit_deadline(&mut message, mediator.inner.max_inbound_timeout) {
            return Box::pin(std::future::ready(Err(e)));
        }
        if message.handled_by.as_deref() == Some(mediator.service()) {
            return Box::pin(std::future::ready(Ok(())));
        }
        match mediator.inner.inbound_events.get(&*message.name) {
            Some(handle) => handle(mediator.clone(), message),
            None => Box::pin(std::future::ready(Err(unknown_name(
                &message.name,
                "event",
            )))),
        }
    }
}

/// Runs user code that is not a handler (a `Deserialize` or `Serialize`
/// impl) and turns a panic in it into a codec error: the peer answers and
/// keeps serving.
fn unwinding<T>(name: &'static str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = crate::error::panic_message(&*panic);
        tracing::error!(message = name, what, panic = %why, "serde code panicked");
        Err(Error::codec(format!("{what} panicked: {why}"))
            .with_message_name(name)
            .with_retryable(false))
    })
}

fn undecodable(name: &'static str, e: &Error) -> Error {
    Error::codec(format!(
        "the payload of `{name}` could not be decoded: {}; the sender must encode the \
         message in the format its content type names",
        e.message()
    ))
    .with_message_name(name)
    .with_retryable(false)
}

fn unknown_name(name: &str, kind: &str) -> Error {
    Error::new(
        ErrorKind::NoHandler,
        format!("this peer has no handler for {kind} `{name}`; the message was not decoded"),
    )
    .with_message_name(name.to_owned())
}

/// Decodes an incoming request of type `R` and runs it through its local route.
pub(crate) fn inbound_request<R: Request>(
    mediator: Mediator,
    message: WireMessage,
) -> BoxFuture<'static, Result<WireReply>> {
    Box::pin(async move {
        let request: R = unwinding(R::NAME, "decoding", || {
            message.format.decode(&message.payload)
        })
        .map_err(|e| undecodable(R::NAME, &e))?;
        let route = request_route::<R>(&mediator.inner)?;
        let mut ctx = Context::new(mediator.clone(), message.metadata(), R::NAME);
        // Only a route with idempotency (the behavior that detaches) reads it.
        if route.detached {
            ctx = ctx.with_payload(&message.payload);
        }
        let response = route.dispatch_inbound(&request, &ctx).await?;
        let payload = unwinding(R::NAME, "encoding the response", || {
            message.format.encode_bytes(&response)
        })
        .map_err(|e| e.with_message_name(R::NAME))?;
        Ok(WireReply {
            payload,
            format: message.format,
        })
    })
}

/// Decodes an incoming event of type `E` and runs its local handlers.
pub(crate) fn inbound_event<E: Event>(
    mediator: Mediator,
    message: WireMessage,
) -> BoxFuture<'static, Result<()>> {
    Box::pin(async move {
        let event: E = unwinding(E::NAME, "decoding", || {
            message.format.decode(&message.payload)
        })
        .map_err(|e| undecodable(E::NAME, &e))?;
        let Some(route) = event_route::<E>(&mediator.inner).transpose()? else {
            return Ok(());
        };
        let mut ctx = Context::new(mediator.clone(), message.metadata(), E::NAME);
        if route.detached {
            ctx = ctx.with_payload(&message.payload);
        }
        Error::combine(E::NAME, route.dispatch_inbound(&event, &ctx).await)
    })
}
