//! Registering handlers (request, event, closures) and behaviors.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::Arc;

use crate::dispatch::behavior::validation::{Validate, Validation};
use crate::dispatch::behavior::{Behavior, HandlerId, MessageInfo, SharedBehavior};
use crate::dispatch::context::Context;
use crate::dispatch::handler::{DynEventHandler, EventHandler, FnHandler, RequestHandler};
use crate::dispatch::inbound::{inbound_event, inbound_request};
use crate::dispatch::route::{
    EventRoute, EventSlot, RequestRoute, ScopedBehavior, detaches, pipeline_for,
};
use crate::error::Result;
use crate::message::{Event, Message, MessageKind, Request};

use super::{CatgaBuilder, EventHandlers, MakeRoute, PendingEvents, PendingRequest};

impl CatgaBuilder {
    /// Registers the handler of request `R`. A second handler for the same request
    /// type (or wire name) makes [`build`](CatgaBuilder::build) fail, naming both.
    pub fn request_handler<R: Request, H: RequestHandler<R>>(self, handler: H) -> Self {
        let name = RequestHandler::<R>::type_name(&handler);
        self.request_handler_typed(handler, name)
    }

    /// Registers the handler of `R` under a type name used in logs.
    pub(crate) fn request_handler_typed<R: Request, H: RequestHandler<R>>(
        mut self,
        handler: H,
        handler_name: &'static str,
    ) -> Self {
        // Behaviors a stacked handler carries count with the builder's.
        let carried = handler.behavior_types();
        let carried_detach = handler.runs_to_completion();
        let make: MakeRoute = Box::new(move |behaviors, remote| {
            let pipeline = pipeline_for(behaviors, TypeId::of::<R>());
            Box::new(RequestRoute::<R> {
                handler: Box::new(handler),
                // A request has one handler: the message name identifies it.
                id: HandlerId {
                    id: R::NAME.into(),
                    type_name: handler_name,
                },
                detached: detaches(&pipeline) || carried_detach,
                pipeline,
                info: MessageInfo::new::<R, R::Response>(MessageKind::Request),
                remote,
            })
        });
        self.requests.push(PendingRequest {
            type_id: TypeId::of::<R>(),
            name: R::NAME,
            type_name: std::any::type_name::<R>(),
            handler_name,
            make,
            inbound: inbound_request::<R>,
            idempotent: R::IDEMPOTENT,
            durable: R::DURABLE,
            carried,
        });
        self
    }

    /// Registers a closure as the handler of request `R`; it receives an owned
    /// clone of the request and of the context.
    pub fn request_fn<R, F, Fut>(self, f: F) -> Self
    where
        R: Request + Clone,
        F: Fn(R, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response>> + Send + 'static,
    {
        self.request_handler::<R, _>(FnHandler::<F, R>::new(f))
    }

    /// Adds a handler of event `E`; an event may have any number of handlers.
    ///
    /// Its stable id (what idempotency keys use) is `<event name>#<n>`, `n`
    /// being its position among `E`'s handlers registered without a name. Give
    /// it a name with [`CatgaBuilder::event_handler_named`] when the order of
    /// registrations may change between versions of the service.
    pub fn event_handler<E: Event, H: EventHandler<E>>(self, handler: H) -> Self {
        self.event_handler_with(handler, std::any::type_name::<H>(), None)
    }

    /// Adds a handler of event `E` under `name`, unique among `E`'s handlers:
    /// its stable id is `<event name>#<name>`, the same on every copy of the
    /// service whatever compiler built it or in which order handlers were added.
    pub fn event_handler_named<E: Event, H: EventHandler<E>>(
        self,
        name: &'static str,
        handler: H,
    ) -> Self {
        self.event_handler_with(handler, std::any::type_name::<H>(), Some(name))
    }

    /// Adds a handler of `E` with its type name (for logs) and optional name.
    pub(crate) fn event_handler_with<E: Event, H: EventHandler<E>>(
        mut self,
        handler: H,
        type_name: &'static str,
        name: Option<&'static str>,
    ) -> Self {
        let entry = (
            Box::new(handler) as Box<dyn DynEventHandler<E>>,
            type_name,
            name,
        );
        let id = TypeId::of::<E>();
        match self.events.iter_mut().find(|(t, _)| *t == id) {
            Some((_, pending)) => {
                if let Some(list) = pending.handlers.downcast_mut::<EventHandlers<E>>() {
                    list.push(entry);
                }
            }
            None => self.events.push((
                id,
                PendingEvents {
                    name: E::NAME,
                    type_name: std::any::type_name::<E>(),
                    handlers: Box::new(vec![entry]),
                    finish: finish_events::<E>,
                    names: handler_names::<E>,
                    inbound: inbound_event::<E>,
                    idempotent: E::IDEMPOTENT,
                    reliable: E::RELIABLE,
                    append: append_events::<E>,
                },
            )),
        }
        self
    }

    /// Adds a closure as a handler of event `E` (id `<event name>#<n>`, see
    /// [`CatgaBuilder::event_handler`]).
    pub fn event_fn<E, F, Fut>(self, f: F) -> Self
    where
        E: Event + Clone,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.event_handler::<E, _>(FnHandler::<F, E>::new(f))
    }

    /// Adds a closure as a handler of event `E` under `name` (see
    /// [`CatgaBuilder::event_handler_named`]).
    pub fn event_fn_named<E, F, Fut>(self, name: &'static str, f: F) -> Self
    where
        E: Event + Clone,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.event_handler_named::<E, _>(name, FnHandler::<F, E>::new(f))
    }

    /// Adds a behavior around every dispatch. Behaviors nest in the order added:
    /// the first added sees the message first and the result last.
    pub fn behavior<B: Behavior>(mut self, behavior: B) -> Self {
        self.behaviors
            .push((None, Arc::new(behavior) as SharedBehavior));
        self
    }

    /// Adds a behavior around dispatches of message type `M` only, at this
    /// position in the order of all behaviors.
    pub fn behavior_for<M: Message, B: Behavior>(mut self, behavior: B) -> Self {
        self.behaviors.push((
            Some(TypeId::of::<M>()),
            Arc::new(behavior) as SharedBehavior,
        ));
        self
    }

    /// Validates every `M` with [`Validate`] before its handler runs; a failure
    /// returns [`ErrorKind::Validation`](crate::ErrorKind::Validation) and the handler never sees the message.
    pub fn validate<M: Message + Validate>(self) -> Self {
        self.behavior_for::<M, _>(Validation::<M>::new())
    }

    /// Sends `R` through the transport even when this peer has its handler, so the
    /// work spreads over every copy (the local handler still serves its share).
    pub fn route_remote<R: Request>(mut self) -> Self {
        self.remote.push((TypeId::of::<R>(), R::NAME));
        self
    }
}

fn finish_events<E: Event>(
    handlers: Box<dyn Any + Send>,
    behaviors: &[ScopedBehavior],
) -> Box<dyn Any + Send + Sync> {
    // Always an `EventHandlers<E>`: the list is keyed by `TypeId::of::<E>()`.
    let handlers = handlers
        .downcast::<EventHandlers<E>>()
        .map(|b| *b)
        .unwrap_or_default();
    let pipeline = pipeline_for(behaviors, TypeId::of::<E>());
    let mut position = 0;
    let slots: Box<[EventSlot<E>]> = handlers
        .into_iter()
        .map(|(handler, type_name, name)| {
            let id = match name {
                Some(name) => format!("{}#{name}", E::NAME),
                None => {
                    position += 1;
                    format!("{}#{}", E::NAME, position - 1)
                }
            };
            EventSlot {
                handler,
                id: HandlerId {
                    id: id.into(),
                    type_name,
                },
                pipeline: pipeline.clone(),
            }
        })
        .collect();
    Box::new(EventRoute::<E> {
        detached: detaches(&pipeline) && !slots.is_empty(),
        slots,
        info: MessageInfo::new::<E, ()>(MessageKind::Event),
    })
}

/// Appends `more` (`EventHandlers<E>`) to `handlers`.
fn append_events<E: Event>(handlers: &mut Box<dyn Any + Send>, more: Box<dyn Any + Send>) {
    if let (Some(list), Ok(more)) = (
        handlers.downcast_mut::<EventHandlers<E>>(),
        more.downcast::<EventHandlers<E>>(),
    ) {
        list.extend(*more);
    }
}

/// The registered names of `E`'s handlers.
fn handler_names<E: Event>(handlers: &(dyn Any + Send)) -> Vec<&'static str> {
    handlers
        .downcast_ref::<EventHandlers<E>>()
        .map(|list| list.iter().filter_map(|(_, _, name)| *name).collect())
        .unwrap_or_default()
}
