//! Run with `cargo run -p inventory-service` (set `CATGA_NATS_URL` and
//! `CATGA_REDIS_URL` to join a cluster; see `shop_common::config`).

#[tokio::main]
async fn main() -> catga::Result<()> {
    shop_common::ops::init_tracing();
    let config = shop_common::Config::from_env("inventory", "127.0.0.1:0")?;
    let infra = shop_common::Infra::connect(config).await?;
    inventory_service::run(infra).await
}
