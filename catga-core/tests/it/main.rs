//! Integration tests of catga-core, one binary for the whole crate.

mod codec;
mod durable;
mod effectively_once;
mod layers;
mod leader;
mod mediator;
mod messages;
mod peer;
mod pipeline;
mod saga;
mod stores;
mod transport;

/// Starts a saga of `saga`'s definition through its handle.
pub(crate) async fn start_saga<D: catga_core::saga::SagaData>(
    m: &catga_core::Mediator,
    saga: &catga_core::saga::Saga<D>,
    data: D,
) -> catga_core::Result<catga_core::Uuid> {
    catga_core::saga::SagaHandle::<D>::named(m, saga.name())?
        .start(data)
        .await
}

/// Starts a saga with a chosen id through its handle.
pub(crate) async fn start_saga_with_id<D: catga_core::saga::SagaData>(
    m: &catga_core::Mediator,
    saga: &catga_core::saga::Saga<D>,
    id: catga_core::Uuid,
    data: D,
) -> catga_core::Result<catga_core::Uuid> {
    catga_core::saga::SagaHandle::<D>::named(m, saga.name())?
        .start_with_id(id, data)
        .await
}

/// Asks a saga's handle whether one more may start.
pub(crate) async fn admit_saga<D: catga_core::saga::SagaData>(
    m: &catga_core::Mediator,
    saga: &catga_core::saga::Saga<D>,
) -> catga_core::Result<()> {
    catga_core::saga::SagaHandle::<D>::named(m, saga.name())?
        .admit()
        .await
}
