//! The payment service: charges and refunds per order.
//!
//! Handles `payment.ChargePayment` (the customer `declined` is always declined,
//! with `payment.declined`) and `payment.RefundPayment`, refunds a paid order
//! that is cancelled (`orders.OrderCancelled`), and records a receipt for every
//! paid order (`orders.OrderPaid`, once per order: the receipt commits with the
//! event's idempotency record). A charge is idempotent per order without the
//! idempotency behavior: the payment store charges an order at most once (a
//! repeat returns the first payment id) and refuses a charge after its refund.

use std::sync::Arc;

use catga::{Catga, CatgaBuilder, Context, Error, Result};
use shop_common::Infra;
use shop_common::messages::{ChargePayment, OrderCancelled, OrderPaid, RefundPayment};
use shop_common::store::{OrderStore, PaymentStore};

/// The payment service as a module: its handlers (and sagas), merged into a
/// peer with `CatgaBuilder::merge`.
pub fn module(infra: &Infra) -> CatgaBuilder {
    let payments: Arc<dyn PaymentStore> = infra.payments.clone();
    let (p1, p2, p3) = (payments.clone(), payments.clone(), payments);
    let receipts: Arc<dyn OrderStore> = infra.orders.clone();
    Catga::builder()
        .event_fn_named("receipt", move |e: OrderPaid, ctx: Context| {
            let receipts = receipts.clone();
            async move { receipts.receipt(&ctx, e.order_id).await }
        })
        .request_fn(move |cmd: ChargePayment, _| {
            let payments = p1.clone();
            async move {
                if cmd.customer == "declined" {
                    return Err(Error::handler(
                        "payment.declined",
                        format!("the card of `{}` was declined", cmd.customer),
                    ));
                }
                payments.charge(cmd.order_id, cmd.amount_cents).await
            }
        })
        .request_fn(move |cmd: RefundPayment, _| {
            let payments = p2.clone();
            async move { payments.refund(cmd.order_id).await }
        })
        .event_fn(move |e: OrderCancelled, _| {
            let payments = p3.clone();
            async move {
                if e.paid {
                    tracing::info!(order = %e.order_id, "refunding a cancelled order");
                    payments.refund(e.order_id).await?;
                }
                Ok(())
            }
        })
}

/// Serves until shut down.
pub async fn run(infra: Infra) -> Result<()> {
    let peer = infra.builder().merge(module(&infra)).start().await?;
    infra.serve(peer, axum::Router::new(), None).await
}
