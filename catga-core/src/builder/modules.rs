//! [`CatgaBuilder::merge`]: a service composed of modules.

use std::any::TypeId;

use crate::error::{Error, ErrorKind};

use super::CatgaBuilder;

impl CatgaBuilder {
    /// Adds a module: a builder that registers one part of a service (its
    /// handlers, behaviors, sagas, leader tasks, resources), so that a
    /// service is a function returning its module, composed like
    /// `axum::Router::merge`.
    ///
    /// - A behavior the module adds for every message (`.behavior(..)`)
    ///   wraps the module's own message types only (every handler of them:
    ///   a handler of the same event in another module too), inside the
    ///   behaviors this builder added before the merge;
    ///   `.behavior_for::<M>()` keeps its type.
    /// - Handlers, sagas, leader tasks, remote routes and idempotent
    ///   declarations add up; a request handled in two modules, or one saga
    ///   or leader task name used twice, is a build error naming both.
    /// - The transport and the stores (lock, saga, outbox, idempotency) are
    ///   taken from the module when this builder has none; set in both, or a
    ///   setting such as `service` or a timeout set in the module, is a build
    ///   error: those belong to the service's own builder.
    ///
    /// ```
    /// # use catga_core::{Catga, CatgaBuilder, Message, Request};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Clone, Serialize, Deserialize)] struct Ping;
    /// # impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
    /// # impl Request for Ping { type Response = (); }
    /// fn pings() -> CatgaBuilder {
    ///     Catga::builder().request_fn(|_: Ping, _| async { Ok(()) })
    /// }
    /// let mediator = Catga::builder().service("demo").merge(pings()).build()?;
    /// # drop(mediator);
    /// # Ok::<(), catga_core::Error>(())
    /// ```
    pub fn merge(mut self, module: CatgaBuilder) -> Self {
        let mut module = module;
        if !module.settings.is_empty() {
            self.deferred.push(Error::new(
                ErrorKind::Config,
                format!(
                    "a merged module sets {}: settings belong to the service's own builder, \
                     not to a module",
                    module.settings.join(", ")
                ),
            ));
        }
        let own_types: Vec<TypeId> = module
            .requests
            .iter()
            .map(|p| p.type_id)
            .chain(module.events.iter().map(|(id, _)| *id))
            .collect();
        for (scope, behavior) in module.behaviors.drain(..) {
            match scope {
                Some(type_id) => self.behaviors.push((Some(type_id), behavior)),
                None => self.behaviors.extend(
                    own_types
                        .iter()
                        .map(|type_id| (Some(*type_id), behavior.clone())),
                ),
            }
        }
        self.requests.append(&mut module.requests);
        for (type_id, pending) in module.events {
            match self.events.iter_mut().find(|(t, _)| *t == type_id) {
                Some((_, mine)) => {
                    (mine.append)(&mut mine.handlers, pending.handlers);
                    mine.idempotent |= pending.idempotent;
                }
                None => self.events.push((type_id, pending)),
            }
        }
        self.remote.append(&mut module.remote);
        self.leader_tasks.append(&mut module.leader_tasks);
        self.sagas.append(&mut module.sagas);
        self.idempotent.append(&mut module.idempotent);
        self.deferred.append(&mut module.deferred);
        self.required.append(&mut module.required);
        for (type_id, value) in module.resources {
            let name = module.resource_names.get(&type_id).copied().unwrap_or("?");
            if self.resources.insert(type_id, value).is_some() {
                self.deferred.push(Error::new(
                    ErrorKind::Config,
                    format!("two resources of type `{name}`: give each module its own type"),
                ));
            }
            self.resource_names.insert(type_id, name);
        }
        let mut both = Vec::new();
        take(
            &mut self.transport,
            module.transport,
            "a transport",
            &mut both,
        );
        take(
            &mut self.lock_store,
            module.lock_store,
            "a lock store",
            &mut both,
        );
        take(
            &mut self.saga_store,
            module.saga_store,
            "a saga store",
            &mut both,
        );
        take(&mut self.outbox, module.outbox, "an outbox", &mut both);
        if self.idempotency.is_none() {
            self.idempotency_outbox = module.idempotency_outbox;
        }
        take(
            &mut self.idempotency,
            module.idempotency,
            "an idempotency store",
            &mut both,
        );
        if !both.is_empty() {
            self.deferred.push(Error::new(
                ErrorKind::Config,
                format!(
                    "both the service's builder and a merged module set {}: set each once, on \
                     the service's builder",
                    both.join(", ")
                ),
            ));
        }
        self
    }
}

/// `module`'s value when `mine` has none; notes `what` when both have one.
fn take<T>(
    mine: &mut Option<T>,
    module: Option<T>,
    what: &'static str,
    both: &mut Vec<&'static str>,
) {
    match (mine.is_some(), module) {
        (_, None) => {}
        (false, Some(value)) => *mine = Some(value),
        (true, Some(_)) => both.push(what),
    }
}
