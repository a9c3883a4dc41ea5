use catga::Request;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.Charge", response = (), reliable)]
struct Charge;

fn main() {}
