//! Run with `cargo run -p quickstart`.
//!
//! The README example, a little longer: a command whose handler publishes an
//! event, two event handlers, all in one process on the in-memory defaults,
//! registered by `#[handler]` and `auto_register()`.

use catga::{Catga, Context, Event, Request, Result, handler};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.PlaceOrder", response = u64)]
struct PlaceOrder {
    item: String,
    qty: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.OrderPlaced")]
struct OrderPlaced {
    order: u64,
    item: String,
}

#[handler]
async fn place_order(cmd: &PlaceOrder, ctx: &Context) -> Result<u64> {
    let order = u64::from(cmd.qty) * 1000 + 7;
    ctx.publish(OrderPlaced {
        order,
        item: cmd.item.clone(),
    })
    .await?;
    Ok(order)
}

#[handler]
async fn reserve_stock(e: &OrderPlaced, _: &Context) -> Result<()> {
    println!("stock: reserve {} for order {}", e.item, e.order);
    Ok(())
}

#[handler]
async fn send_confirmation(e: &OrderPlaced, ctx: &Context) -> Result<()> {
    println!(
        "mail: confirm order {} (correlation {})",
        e.order,
        ctx.correlation_id()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mediator = Catga::builder().auto_register().build()?;
    let order = mediator
        .send(PlaceOrder {
            item: "book".into(),
            qty: 2,
        })
        .await?;
    println!("placed order {order}");
    Ok(())
}
