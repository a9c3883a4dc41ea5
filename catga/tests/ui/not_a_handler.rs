use catga::{Catga, Context, Request, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Request)]
#[catga(response = u32)]
struct CreateOrder {
    qty: u32,
}

struct NotAHandler;

fn main() -> Result<()> {
    let _ = Catga::builder().request_handler::<CreateOrder, _>(NotAHandler).build()?;
    let _ = |_: &Context| ();
    Ok(())
}
