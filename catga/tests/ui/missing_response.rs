use catga::Request;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Request)]
#[catga(name = "orders.CreateOrder")]
struct CreateOrder {
    qty: u32,
}

fn main() {}
