//! The inventory service: stock per SKU, reservations per order.
//!
//! Handles `inventory.ReserveStock` (fails with `inventory.out_of_stock`),
//! `inventory.ReleaseStock` and `inventory.GetStock`, and gives stock back when
//! a paid order is cancelled (`orders.OrderCancelled`). A reservation is
//! idempotent per order (one atomic write that does nothing on a repeat), so
//! a saga step re-sent after a crash reserves once.

use std::sync::Arc;

use catga::{Catga, CatgaBuilder, Error, Result};
use shop_common::Infra;
use shop_common::messages::{GetStock, OrderCancelled, ReleaseStock, ReserveStock};
use shop_common::store::StockStore;

/// The inventory service as a module: its handlers (and sagas), merged into a
/// peer with `CatgaBuilder::merge`.
pub fn module(infra: &Infra) -> CatgaBuilder {
    let stock: Arc<dyn StockStore> = infra.stock.clone();
    let (s1, s2, s3, s4) = (stock.clone(), stock.clone(), stock.clone(), stock);
    Catga::builder()
        .validate::<ReserveStock>()
        .request_fn(move |cmd: ReserveStock, _| {
            let stock = s1.clone();
            async move {
                if stock.reserve(cmd.order_id, &cmd.sku, cmd.qty).await? {
                    Ok(())
                } else {
                    Err(Error::handler(
                        "inventory.out_of_stock",
                        format!("not enough `{}` for {} units", cmd.sku, cmd.qty),
                    ))
                }
            }
        })
        .request_fn(move |cmd: ReleaseStock, _| {
            let stock = s2.clone();
            async move { stock.release(cmd.order_id, &cmd.sku).await }
        })
        .request_fn(move |q: GetStock, _| {
            let stock = s3.clone();
            async move { stock.available(&q.sku).await }
        })
        .event_fn(move |e: OrderCancelled, _| {
            let stock = s4.clone();
            async move {
                tracing::info!(order = %e.order_id, "releasing stock of a cancelled order");
                stock.release(e.order_id, &e.sku).await
            }
        })
}

/// Seeds stock and serves until shut down.
pub async fn run(infra: Infra) -> Result<()> {
    infra.seed_stock().await?;
    let peer = infra.builder().merge(module(&infra)).start().await?;
    infra.serve(peer, axum::Router::new(), None).await
}
