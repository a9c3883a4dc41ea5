//! The contracts between the shop services: every message that crosses a
//! service boundary, with its wire name.

use catga::{Event, Request};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Created, not paid yet.
    Created,
    /// Payment saga running: stock being reserved, payment being charged.
    Paying,
    /// Stock reserved and payment charged.
    Paid,
    /// Handed to shipping.
    Shipped,
    /// Cancelled by the customer (stock released and payment refunded if any).
    Cancelled,
    /// The payment saga failed (out of stock, card declined); nothing is held.
    Rejected,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id.
    pub id: Uuid,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// Price per unit, in cents.
    pub unit_price_cents: u64,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it was rejected, when it was.
    pub reason: Option<String>,
    /// The payment saga, once paying started.
    pub saga: Option<Uuid>,
    /// When the payment saga settled it (paid or rejected), Unix time in
    /// milliseconds: how the load generator tells orders paid within their
    /// deadline.
    #[serde(default)]
    pub settled_at_ms: Option<u64>,
}

impl Order {
    /// Total in cents.
    pub fn total_cents(&self) -> u64 {
        self.unit_price_cents * u64::from(self.qty)
    }
}

/// Create an order (no side effects yet).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.CreateOrder", response = Order, idempotent)]
pub struct CreateOrder {
    /// Who orders.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many (1 or more).
    pub qty: u32,
    /// Price per unit, in cents.
    pub unit_price_cents: u64,
}

/// Pay an order: starts the payment saga (reserve stock, charge, confirm).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.PayOrder", response = Order)]
pub struct PayOrder {
    /// The order.
    pub order_id: Uuid,
}

/// Ship a paid order.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.ShipOrder", response = Order, partition = order_id, idempotent)]
pub struct ShipOrder {
    /// The order.
    pub order_id: Uuid,
}

/// Cancel an order that has not shipped.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.CancelOrder", response = Order, partition = order_id, idempotent)]
pub struct CancelOrder {
    /// The order.
    pub order_id: Uuid,
}

/// One order.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.GetOrder", response = Option<Order>)]
pub struct GetOrder {
    /// The order.
    pub order_id: Uuid,
}

/// Orders, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.ListOrders", response = Vec<Order>)]
pub struct ListOrders {
    /// At most this many.
    pub limit: usize,
}

/// Saga step: set the final status of an order's payment (paid or rejected).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.SettleOrder", response = (), partition = order_id, idempotent)]
pub struct SettleOrder {
    /// The order.
    pub order_id: Uuid,
    /// `Paid` or `Rejected`.
    pub status: OrderStatus,
    /// Why, when rejected.
    pub reason: Option<String>,
}

/// Reserve stock for an order; fails with `inventory.out_of_stock`.
///
/// Not declared `idempotent`: its effect is idempotent already. The stock
/// store reserves per order in one atomic step that does nothing on a repeat
/// (keeps a refusal for want of stock as one, and refuses an order whose
/// stock was released), so a re-sent or duplicated command takes effect once
/// and gets the same answer without the idempotency store's claim and record
/// (four Redis commands a reservation saves).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "inventory.ReserveStock", response = ())]
pub struct ReserveStock {
    /// The order.
    pub order_id: Uuid,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// Give an order's reserved stock back.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "inventory.ReleaseStock", response = (), idempotent)]
pub struct ReleaseStock {
    /// The order.
    pub order_id: Uuid,
    /// What was reserved.
    pub sku: String,
}

/// Stock available for a SKU.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "inventory.GetStock", response = u64)]
pub struct GetStock {
    /// What.
    pub sku: String,
}

/// Charge an order's customer; fails with `payment.declined`.
///
/// Not declared `idempotent`, like [`ReserveStock`]: the payment store
/// charges per order in one atomic step, and a repeat returns the first
/// charge's payment id (or refuses an order already refunded).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "payment.ChargePayment", response = Uuid)]
pub struct ChargePayment {
    /// The order.
    pub order_id: Uuid,
    /// Who pays (`declined` is always declined, for demos).
    pub customer: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// Refund an order's payment.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "payment.RefundPayment", response = (), idempotent)]
pub struct RefundPayment {
    /// The order.
    pub order_id: Uuid,
}

/// An order was paid.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.OrderPaid", partition = order_id, idempotent, reliable)]
pub struct OrderPaid {
    /// The order.
    pub order_id: Uuid,
}

/// An order was shipped: its reserved stock is gone for good.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.OrderShipped", reliable)]
pub struct OrderShipped {
    /// The order.
    pub order_id: Uuid,
    /// What.
    pub sku: String,
}

/// An order was cancelled after payment: stock and money go back.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.OrderCancelled", idempotent, reliable)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// What was reserved.
    pub sku: String,
    /// Whether money was taken (and must be refunded).
    pub paid: bool,
}

impl catga::behavior::validation::Validate for CreateOrder {
    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.customer.trim().is_empty() {
            problems.push("customer is empty");
        }
        if self.sku.trim().is_empty() {
            problems.push("sku is empty");
        }
        if self.qty == 0 {
            problems.push("qty must be at least 1");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl catga::behavior::validation::Validate for ReserveStock {
    fn validate(&self) -> Result<(), String> {
        if self.qty == 0 || self.sku.is_empty() {
            Err("a reservation needs a sku and at least 1 unit".into())
        } else {
            Ok(())
        }
    }
}
