//! Run with `cargo run -p order-service`.
//!
//! With no configuration it runs the whole shop (orders, inventory, payment) in
//! this process, in memory, and prints the HTTP address. With `CATGA_NATS_URL`
//! and `CATGA_REDIS_URL` it joins a cluster and handles orders only; see
//! `shop_common::config` and docs/deployment.md.

#[tokio::main]
async fn main() -> catga::Result<()> {
    shop_common::ops::init_tracing();
    let config = shop_common::Config::from_env("orders", "127.0.0.1:8080")?;
    let infra = shop_common::Infra::connect(config).await?;
    order_service::run(infra).await
}
