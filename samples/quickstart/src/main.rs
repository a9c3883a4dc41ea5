//! Run with `cargo run -p quickstart`.
//!
//! The README example: a command with a handler that publishes an event, two
//! event handlers, all in one process on the in-memory defaults.

use catga::{Catga, Context, Event, Message, Request, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlaceOrder {
    item: String,
    qty: u32,
}
impl Message for PlaceOrder {
    const NAME: &'static str = "orders.PlaceOrder";
}
impl Request for PlaceOrder {
    type Response = u64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    item: String,
}
impl Message for OrderPlaced {
    const NAME: &'static str = "orders.OrderPlaced";
}
impl Event for OrderPlaced {}

#[tokio::main]
async fn main() -> Result<()> {
    let mediator = Catga::builder()
        .request_fn(|cmd: PlaceOrder, ctx: Context| async move {
            let order = u64::from(cmd.qty) * 1000 + 7;
            ctx.publish(OrderPlaced {
                order,
                item: cmd.item,
            })
            .await?;
            Ok(order)
        })
        .event_fn(|e: OrderPlaced, _| async move {
            println!("stock: reserve {} for order {}", e.item, e.order);
            Ok(())
        })
        .event_fn(|e: OrderPlaced, ctx: Context| async move {
            println!(
                "mail: confirm order {} (correlation {})",
                e.order,
                ctx.correlation_id()
            );
            Ok(())
        })
        .build()?;

    let order = mediator
        .send(PlaceOrder {
            item: "book".into(),
            qty: 2,
        })
        .await?;
    println!("placed order {order}");
    Ok(())
}
