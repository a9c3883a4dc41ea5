//! The order service: the shop's HTTP API, order commands and queries, and the
//! payment saga that reserves stock, charges the customer and confirms the order
//! (compensating in reverse when a step fails).
//!
//! [`app`] builds the HTTP router over a mediator, so tests call it without a
//! server; [`run`] serves it.

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use catga::saga::{Saga, SagaHandle, Step};
use catga::{Catga, CatgaBuilder, Context, Mediator, Result};
use serde::{Deserialize, Serialize};
use shop_common::Infra;
use shop_common::messages::{
    CancelOrder, ChargePayment, CreateOrder, GetOrder, ListOrders, Order, OrderCancelled,
    OrderPaid, OrderShipped, OrderStatus, PayOrder, RefundPayment, ReleaseStock, ReserveStock,
    SettleOrder, ShipOrder,
};
use shop_common::store::{OrderStore, not_found};
use uuid::Uuid;

/// What the payment saga carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    /// The order.
    pub order_id: Uuid,
    /// Who pays.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// How much.
    pub amount_cents: u64,
}

/// The payment saga: hold the order, reserve stock, charge, confirm. On failure,
/// refund, release and reject the order, in that order. `PayOrder` marks the
/// order `Paying` before it starts the saga, so holding it needs no message:
/// "hold" is a step that only compensates (rejects the order).
pub fn payment_saga() -> Saga<Payment> {
    let settle = |status: OrderStatus| {
        move |p: &Payment| SettleOrder {
            order_id: p.order_id,
            status,
            reason: None,
        }
    };
    Saga::new("orders.payment")
        .step(Step::compensation_only(
            "hold",
            settle(OrderStatus::Rejected),
        ))
        .step(
            Step::send("reserve", |p: &Payment| ReserveStock {
                order_id: p.order_id,
                sku: p.sku.clone(),
                qty: p.qty,
            })
            .compensate(|p: &Payment| ReleaseStock {
                order_id: p.order_id,
                sku: p.sku.clone(),
            })
            .timeout(Duration::from_secs(5))
            .retries(5),
        )
        .step(
            Step::send("charge", |p: &Payment| ChargePayment {
                order_id: p.order_id,
                customer: p.customer.clone(),
                amount_cents: p.amount_cents,
            })
            .compensate(|p: &Payment| RefundPayment {
                order_id: p.order_id,
            })
            .timeout(Duration::from_secs(5))
            .retries(5),
        )
        .step(
            Step::send("confirm", settle(OrderStatus::Paid))
                .timeout(Duration::from_secs(5))
                .retries(10),
        )
        .compensation_retries(10, Duration::from_millis(100))
        .max_concurrent(256)
        // Admission (see `PayOrder`): at most this many payments unfinished;
        // beyond, paying answers 503 at once. About what one coordinator
        // finishes in a second on the benchmark machine.
        .max_backlog(512)
        .polling(Duration::from_millis(100), Duration::from_secs(5))
}

/// Sets the final status of an order's payment. The status change and
/// `OrderPaid` are staged: they commit together with the command's completion,
/// or not at all (see [`OrderStore::transition_staged`]). Paying reads the
/// order once (in the transition); rejecting, rare, reads it first to find
/// the saga's error.
async fn settle(orders: &dyn OrderStore, cmd: SettleOrder, ctx: &Context) -> Result<()> {
    let reason = match cmd.status {
        OrderStatus::Rejected => {
            let current = orders
                .get(cmd.order_id)
                .await?
                .ok_or_else(|| not_found(cmd.order_id))?;
            if current.status == cmd.status {
                return Ok(());
            }
            match current.saga {
                Some(saga) => SagaHandle::<Payment>::of(ctx.mediator())?
                    .state(saga)
                    .await?
                    .and_then(|s| s.error)
                    .or(cmd.reason),
                None => cmd.reason,
            }
        }
        _ => cmd.reason,
    };
    let status = cmd.status;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let settled = orders
        .transition_staged(ctx, cmd.order_id, &[OrderStatus::Paying], &|o| {
            o.status = status;
            o.reason = reason.clone();
            o.settled_at_ms = Some(now_ms);
        })
        .await;
    match settled {
        Ok(_) => {}
        // Not paying any more: settled with this status already (an attempt
        // whose outcome was not stored) is done; anything else is the error.
        Err(e) if e.kind() == catga::ErrorKind::Conflict => match orders.get(cmd.order_id).await? {
            Some(o) if o.status == status => return Ok(()),
            _ => return Err(e),
        },
        Err(e) => return Err(e),
    }
    tracing::info!(order = %cmd.order_id, ?status, "order settled (commits with this command)");
    if status == OrderStatus::Paid {
        ctx.publish(OrderPaid {
            order_id: cmd.order_id,
        })
        .await?;
    }
    Ok(())
}

/// Adds the order handlers and the payment saga to `builder`.
pub fn module(infra: &Infra) -> CatgaBuilder {
    let orders: Arc<dyn OrderStore> = infra.orders.clone();
    let (o1, o2, o3, o4, o5, o6, o7) = (
        orders.clone(),
        orders.clone(),
        orders.clone(),
        orders.clone(),
        orders.clone(),
        orders.clone(),
        orders,
    );
    Catga::builder()
        .validate::<CreateOrder>()
        .saga(payment_saga())
        .request_fn(move |cmd: CreateOrder, ctx: Context| {
            let orders = o1.clone();
            async move {
                let order = Order {
                    id: ctx.message_id(),
                    customer: cmd.customer,
                    sku: cmd.sku,
                    qty: cmd.qty,
                    unit_price_cents: cmd.unit_price_cents,
                    status: OrderStatus::Created,
                    reason: None,
                    saga: None,
                    settled_at_ms: None,
                };
                orders.insert(&order).await?;
                Ok(order)
            }
        })
        .request_fn(move |cmd: PayOrder, ctx: Context| {
            let orders = o2.clone();
            async move {
                // One payment saga per order, whatever retries happen.
                let saga = Uuid::new_v5(&cmd.order_id, b"payment");
                // Admission: with the payment backlog full, answer 503 now
                // rather than pay late; unless this retries a payment that
                // began (its saga must exist, whatever the backlog).
                let payments = SagaHandle::<Payment>::of(ctx.mediator())?;
                if let Err(e) = payments.admit().await {
                    match orders.get(cmd.order_id).await? {
                        Some(o) if o.saga == Some(saga) => {}
                        _ => return Err(e),
                    }
                }
                let order = match orders
                    .transition(cmd.order_id, &[OrderStatus::Created], &|o| {
                        o.status = OrderStatus::Paying;
                        o.saga = Some(saga);
                    })
                    .await
                {
                    Ok(order) => order,
                    // A retry after the transition: make sure the saga exists.
                    // Once the order is settled, its saga has run: answer as is.
                    Err(e) if e.kind() == catga::ErrorKind::Conflict => {
                        match orders.get(cmd.order_id).await? {
                            Some(o) if o.saga == Some(saga) && o.status != OrderStatus::Paying => {
                                return Ok(o);
                            }
                            Some(o) if o.saga == Some(saga) => o,
                            _ => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                };
                let payment = Payment {
                    order_id: order.id,
                    customer: order.customer.clone(),
                    sku: order.sku.clone(),
                    qty: order.qty,
                    amount_cents: order.total_cents(),
                };
                payments.start_with_id(saga, payment).await?;
                Ok(order)
            }
        })
        .request_fn(move |cmd: ShipOrder, ctx: Context| {
            let orders = o3.clone();
            async move {
                let order = orders
                    .transition_staged(&ctx, cmd.order_id, &[OrderStatus::Paid], &|o| {
                        o.status = OrderStatus::Shipped
                    })
                    .await?;
                ctx.publish(OrderShipped {
                    order_id: order.id,
                    sku: order.sku.clone(),
                })
                .await?;
                Ok(order)
            }
        })
        .request_fn(move |cmd: CancelOrder, ctx: Context| {
            let orders = o4.clone();
            async move {
                let before = orders
                    .get(cmd.order_id)
                    .await?
                    .ok_or_else(|| not_found(cmd.order_id))?;
                let order = orders
                    .transition_staged(
                        &ctx,
                        cmd.order_id,
                        &[OrderStatus::Created, OrderStatus::Paid],
                        &|o| o.status = OrderStatus::Cancelled,
                    )
                    .await?;
                if before.status == OrderStatus::Paid {
                    ctx.publish(OrderCancelled {
                        order_id: order.id,
                        sku: order.sku.clone(),
                        paid: true,
                    })
                    .await?;
                }
                Ok(order)
            }
        })
        .request_fn(move |q: GetOrder, _| {
            let orders = o5.clone();
            async move { orders.get(q.order_id).await }
        })
        .request_fn(move |q: ListOrders, _| {
            let orders = o6.clone();
            async move { orders.list(q.limit.clamp(1, 1000)).await }
        })
        .request_fn(move |cmd: SettleOrder, ctx: Context| {
            let orders = o7.clone();
            async move { settle(&*orders, cmd, &ctx).await }
        })
}

/// The whole shop in one mediator (embedded mode): orders, inventory, payment.
pub fn embedded(infra: &Infra) -> CatgaBuilder {
    infra
        .builder()
        .merge(module(infra))
        .merge(inventory_service::module(infra))
        .merge(payment_service::module(infra))
}

/// The HTTP API over `mediator`.
pub fn app(mediator: Mediator) -> axum::Router {
    http::router(mediator)
}

/// Serves the order service: in a cluster only the order handlers, otherwise
/// the whole shop in this one process.
pub async fn run(infra: Infra) -> Result<()> {
    let builder = if infra.config.is_cluster() {
        infra.builder().merge(module(&infra))
    } else {
        infra.seed_stock().await?;
        embedded(&infra)
    };
    let peer = builder.start().await?;
    let admission = http::admission(infra.config.http_limit);
    let api = admission.layer(app(peer.mediator().clone()));
    infra.serve(peer, api, Some(admission.stats())).await
}
