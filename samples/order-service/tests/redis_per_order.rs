//! Redis commands per paid order: the embedded shop (orders, inventory,
//! payment and its saga in one process) on a real Redis, counted with
//! `INFO commandstats` around a batch of orders created and paid. Prints
//! the count and its breakdown (`-- --nocapture`); fails when it grows past a
//! generous bound. The idle relay's share is measured before and taken out.

use std::collections::BTreeMap;
use std::time::Duration;

use common::call;
use serde_json::json;
use shop_common::{Config, Infra};

mod common;

/// The shop's infrastructure on `redis` alone (no NATS), with one SKU's stock.
async fn embedded_infra(redis: &catga_test_support::RedisServer, (sku, qty): (&str, u64)) -> Infra {
    let config = Config {
        service: "orders".into(),
        nats: None,
        redis: Some(redis.url()),
        http: "127.0.0.1:0".parse().unwrap(),
        http_limit: shop_common::config::HttpLimit::Fixed(256),
        shutdown_grace: Duration::from_secs(5),
        seed_stock: vec![(sku.into(), qty)],
    };
    Infra::connect(config).await.unwrap()
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_per_paid_order() {
    let redis = catga_test_support::RedisServer::start();
    let infra = embedded_infra(&redis, ("book", 10_000)).await;
    infra.seed_stock().await.unwrap();
    let peer = order_service::embedded(&infra).start().await.unwrap();
    let app = order_service::app(peer.mediator().clone());

    async fn pay_orders(app: &axum::Router, n: usize) {
        let mut ids = Vec::new();
        for i in 0..n {
            let (_, order) = call(
                app,
                "POST",
                "/orders",
                Some(json!({"customer": format!("c{i}"), "sku": "book", "qty": 1, "unit_price_cents": 1500})),
            )
            .await;
            let id = order["id"].as_str().unwrap().to_owned();
            call(app, "POST", &format!("/orders/{id}/pay"), None).await;
            ids.push(id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for id in ids {
            loop {
                let (_, o) = call(app, "GET", &format!("/orders/{id}"), None).await;
                if o["status"] == "paid" {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "not paid: {o}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Warm up (scripts loaded, groups made), then measure the idle rate.
    pay_orders(&app, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_start = total(&redis.command_counts());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_per_sec = (total(&redis.command_counts()) - idle_start) as f64 / 2.0;

    const N: usize = 20;
    let before = redis.command_counts();
    let started = tokio::time::Instant::now();
    pay_orders(&app, N).await;
    let took = started.elapsed().as_secs_f64();
    let after = redis.command_counts();
    let mut by_command: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0)) as f64 / N as f64,
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    let per_order = ((total(&after) - total(&before)) as f64 - idle_per_sec * took) / N as f64;
    eprintln!(
        "Redis commands per paid order: {per_order:.1} (idle {idle_per_sec:.1}/s over {took:.1} s taken out); by command: {by_command:?}"
    );
    assert!(per_order > 5.0, "the shop must use Redis: {per_order}");
    assert!(
        per_order < 58.0,
        "{per_order} Redis commands per paid order"
    );
    peer.shutdown().await.unwrap();
}

/// A reservation refused for want of stock stays refused on Redis
/// (`shop_common::store::refusal_stands`: a late repeat of the saga step
/// cannot take stock once some is back).
#[tokio::test]
async fn a_refused_reservation_stays_refused() {
    let redis = catga_test_support::RedisServer::start();
    let infra = embedded_infra(&redis, ("rare", 3)).await;
    infra.seed_stock().await.unwrap();
    shop_common::store::refusal_stands(&*infra.stock, "rare").await;
}
