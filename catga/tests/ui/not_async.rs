use catga::{Context, Request, Result, handler};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Request)]
#[catga(response = u32)]
struct CreateOrder {
    qty: u32,
}

#[handler]
fn create_order(cmd: &CreateOrder, _ctx: &Context) -> Result<u32> {
    Ok(cmd.qty)
}

fn main() {}
