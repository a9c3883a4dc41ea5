use catga::{Context, Result, handler};

#[handler]
async fn handle_any<M: Send + Sync>(_msg: &M, _ctx: &Context) -> Result<()> {
    Ok(())
}

fn main() {}
