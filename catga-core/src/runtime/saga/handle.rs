//! [`SagaHandle`]: the typed way to start a registered saga and read it.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use super::admission::Backlog;
use super::starts::Starts;
use super::{Saga, SagaData, SagaState, SagaStore};
use crate::codec::Format;
use crate::dispatch::handle::{Mediator, TypeMap};
use crate::error::{Error, ErrorKind, Result};

/// Starts sagas of one registered definition and reads their state.
///
/// `build()` makes one for every saga given to
/// [`CatgaBuilder::saga`](crate::CatgaBuilder::saga); find it by its data
/// type with [`SagaHandle::of`] (in a handler, `SagaHandle::<Order>::of(ctx.mediator())?`)
/// or [`Peer::saga`](crate::runtime::Peer::saga), and by name as well with
/// [`SagaHandle::named`] when sagas share a data type. A cheap `Clone`.
///
/// ```
/// # use catga_core::{Catga, saga::{Saga, SagaHandle}};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct Order { qty: u32 }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
/// let peer = Catga::builder().saga(Saga::<Order>::new("orders.fulfilment")).start().await?;
/// let fulfilment: &SagaHandle<Order> = peer.saga::<Order>()?;
/// let id = fulfilment.start(Order { qty: 2 }).await?;
/// assert!(fulfilment.state(id).await?.is_some());
/// peer.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct SagaHandle<D> {
    inner: Arc<Bound<D>>,
}

struct Bound<D> {
    saga: Arc<Saga<D>>,
    store: Arc<dyn SagaStore>,
    starts: Arc<Starts>,
    backlog: Backlog,
}

/// The handles of every saga with data `D`, as one resource.
struct SagaHandles<D>(Vec<SagaHandle<D>>);

fn not_registered<D>(name: Option<&str>) -> Error {
    let what = match name {
        Some(name) => format!("saga `{name}` with data `{}`", std::any::type_name::<D>()),
        None => format!("saga with data `{}`", std::any::type_name::<D>()),
    };
    Error::new(
        ErrorKind::Config,
        format!("no {what} is registered on this peer: add `.saga(..)` to the builder"),
    )
}

impl<D> Clone for SagaHandle<D> {
    fn clone(&self) -> Self {
        SagaHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<D> fmt::Debug for SagaHandle<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaHandle")
            .field("saga", &self.inner.saga.name)
            .field("data", &std::any::type_name::<D>())
            .finish()
    }
}

impl<D: SagaData> Saga<D> {
    /// The handle of this definition on `mediator`, where it is registered
    /// ([`SagaHandle::named`] with this definition's name): start, admit and
    /// read its sagas. Useful where several definitions keep the same data
    /// type, so that [`SagaHandle::of`] cannot choose.
    pub fn handle<'m>(&self, mediator: &'m Mediator) -> Result<&'m SagaHandle<D>> {
        SagaHandle::named(mediator, self.name())
    }
}

impl<D: SagaData> SagaHandle<D> {
    /// Adds the handle of `saga` over `store` to `resources`, beside those
    /// of other sagas with data `D`.
    pub(crate) fn bind(
        saga: Arc<Saga<D>>,
        store: Arc<dyn SagaStore>,
        starts: Arc<Starts>,
        resources: &mut TypeMap<Arc<dyn Any + Send + Sync>>,
    ) {
        let backlog = Backlog::new(saga.max_backlog);
        let handle = SagaHandle {
            inner: Arc::new(Bound {
                saga,
                store,
                starts,
                backlog,
            }),
        };
        let key = TypeId::of::<SagaHandles<D>>();
        let mut handles = resources
            .remove(&key)
            .and_then(|r| r.downcast::<SagaHandles<D>>().ok())
            .map(|h| h.0.clone())
            .unwrap_or_default();
        handles.push(handle);
        resources.insert(key, Arc::new(SagaHandles(handles)));
    }

    /// The handle of the saga registered on `mediator`'s peer with data `D`;
    /// an error when there is none, or more than one (then use
    /// [`SagaHandle::named`]).
    pub fn of(mediator: &Mediator) -> Result<&SagaHandle<D>> {
        match Self::all(mediator)? {
            [one] => Ok(one),
            many => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} sagas keep data of type `{}`: name the one meant with `SagaHandle::named`",
                    many.len(),
                    std::any::type_name::<D>()
                ),
            )),
        }
    }

    /// The handle of saga `name`, with data `D`, registered on `mediator`'s peer.
    pub fn named<'m>(mediator: &'m Mediator, name: &str) -> Result<&'m SagaHandle<D>> {
        Self::all(mediator)?
            .iter()
            .find(|h| h.name() == name)
            .ok_or_else(|| not_registered::<D>(Some(name)))
    }

    fn all(mediator: &Mediator) -> Result<&[SagaHandle<D>]> {
        mediator
            .resource::<SagaHandles<D>>()
            .map(|h| &*h.0)
            .map_err(|_| not_registered::<D>(None))
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.saga.name
    }

    /// Starts a saga with `data` and returns its id; the coordinator, on
    /// whichever peer leads, runs it.
    pub async fn start(&self, data: D) -> Result<Uuid> {
        self.start_with_id(crate::new_id(), data).await
    }

    /// Like [`SagaHandle::start`] with a chosen id. Idempotent: when a saga
    /// with this id exists, nothing changes and the id is returned, so a caller
    /// that retries (or derives the id from its own entity) starts it once.
    pub async fn start_with_id(&self, id: Uuid, data: D) -> Result<Uuid> {
        let b = &*self.inner;
        if start(&*b.store, &b.starts, &b.saga, id, &data).await? {
            b.backlog.started();
        }
        Ok(id)
    }

    /// Whether one more saga may start now: `Ok`, or `overloaded` (code
    /// `catga.saga_backlog`, retryable) when the backlog is at its
    /// [`Saga::max_backlog`]. Call it before the side effects that lead to
    /// [`SagaHandle::start`] (which itself never refuses), and answer the
    /// caller with the error: it may try again shortly.
    pub async fn admit(&self) -> Result<()> {
        let b = &*self.inner;
        b.backlog.admit(&*b.store, &b.saga.name).await
    }

    /// The state of saga `id` (any definition): status, current step, data
    /// and history.
    pub async fn state(&self, id: Uuid) -> Result<Option<SagaState>> {
        self.inner.store.load(id).await
    }
}

/// Stores a new saga instance, unless one with its id exists; returns whether
/// it stored it. The coordinator picks it up: handed over, when it runs on
/// this peer; by listing, on another.
async fn start<D: SagaData>(
    store: &dyn SagaStore,
    starts: &Starts,
    saga: &Saga<D>,
    id: Uuid,
    data: &D,
) -> Result<bool> {
    let state = SagaState::new(id, &saga.name, Format::MsgPack.encode(data)?);
    let created = store.create(&state).await?;
    if created {
        starts.started(state);
    }
    Ok(created)
}
