//! A whole service, from one process in memory to copies behind NATS and
//! Redis: the code `docs/guide.md` walks through.
//!
//! ```sh
//! cargo run -p catga --example billing                       # in memory
//! CATGA_NATS_URL=nats://127.0.0.1:4222 CATGA_REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run -p catga --example billing                   # one copy of many
//! ```
//!
//! It charges a few orders, prints what happened and its health, and stops
//! gracefully (as it would on SIGTERM).

use std::time::Duration;

use catga::store::MemoryIdempotencyStore;
use catga::{Catga, CatgaBuilder, Context, Event, Peer, Request, Result, ResultExt};
use catga_nats::{NatsOptions, NatsTransport};
use catga_redis::{RedisOptions, RedisStore};
use serde::{Deserialize, Serialize};

// ---- the contract: what other services send and hear -----------------------

/// Charge an order. Idempotent: a retry with the same message id charges once.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "billing.Charge", response = u64, idempotent)]
struct Charge {
    order: u64,
    cents: u64,
}

/// An order was charged. Reliable: stored until every interested service has it.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "billing.Charged", reliable)]
struct Charged {
    order: u64,
    cents: u64,
}

/// Send a receipt; durable: may be sent now and handled when the mailer can.
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "billing.SendReceipt", response = (), durable)]
struct SendReceipt {
    order: u64,
}

// ---- the service: a module of handlers --------------------------------------

/// The billing service's handlers, as a module any peer can merge.
fn billing() -> CatgaBuilder {
    Catga::builder()
        .request_fn(|c: Charge, ctx: Context| async move {
            // Stored with the handler's result (the outbox), published after.
            ctx.publish(Charged {
                order: c.order,
                cents: c.cents,
            })
            .await?;
            ctx.send_durable(SendReceipt { order: c.order }).await?;
            Ok(c.cents)
        })
        .event_fn_named("ledger", |e: Charged, _| async move {
            println!("ledger: order {} charged {} cents", e.order, e.cents);
            Ok(())
        })
        .request_fn(|r: SendReceipt, _| async move {
            println!("mailer: receipt for order {}", r.order);
            Ok(())
        })
}

/// The peer: in memory, or one copy among many behind NATS and Redis.
async fn peer() -> Result<Peer> {
    let builder = Catga::builder()
        .service("billing")
        .shutdown_grace(Duration::from_secs(10))
        .merge(billing());
    let nats = std::env::var("CATGA_NATS_URL").ok();
    let redis = std::env::var("CATGA_REDIS_URL").ok();
    match (nats, redis) {
        (Some(nats), Some(redis)) => {
            let nats = NatsTransport::connect(NatsOptions::new(nats.split(',').map(str::to_owned)))
                .await?;
            let redis = RedisStore::connect(RedisOptions::new(redis)).await?;
            builder
                .transport(nats)
                .idempotency(redis.clone()) // claims, results, the outbox
                .lock_store(redis.clone())
                .saga_store(redis)
                .start()
                .await
        }
        _ => {
            builder
                .idempotency(MemoryIdempotencyStore::new())
                .start()
                .await
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let peer = peer().await?;
    for order in 1..=3 {
        let id = catga::new_id();
        let meta = catga::Metadata::new().with_message_id(id);
        let cents = peer
            .send_with(Charge { order, cents: 1500 }, meta.clone())
            .await?;
        // A retry (same id) gets the stored answer: charged once.
        let again = peer.send_with(Charge { order, cents: 1500 }, meta).await?;
        assert_eq!(cents, again);
    }
    // Let the relay move the stored events and commands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = peer.health(Duration::from_secs(2)).await;
    println!("ready: {}", health.is_ready());
    peer.shutdown()
        .await
        .context(catga::ErrorKind::Cancelled, "stopping the billing peer")
}
