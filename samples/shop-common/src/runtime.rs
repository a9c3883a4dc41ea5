//! Turning a [`Config`] into stores, a transport and a Catga builder.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use catga::behavior::idempotency::Idempotency;
use catga::behavior::retry::Retry;
use catga::behavior::tracing::Tracing;
use catga::nats::{NatsOptions, NatsTransport};
use catga::redis::{RedisOptions, RedisStore};
use catga::store::MemoryIdempotencyStore;
use catga::{Catga, CatgaBuilder, Error, Peer, Result};

use crate::config::Config;
use crate::ops::{self, Probe};
use crate::store::{MemoryStores, OrderStore, PaymentStore, RedisStores, StockStore};

/// Everything a service process connects to.
pub struct Infra {
    /// The configuration it was built from.
    pub config: Config,
    /// Orders.
    pub orders: Arc<dyn OrderStore>,
    /// Stock.
    pub stock: Arc<dyn StockStore>,
    /// Payments.
    pub payments: Arc<dyn PaymentStore>,
    nats: Option<NatsTransport>,
    redis: Option<RedisStore>,
    memory: Arc<MemoryIdempotencyStore>,
}

impl std::fmt::Debug for Infra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infra")
            .field("service", &self.config.service)
            .field("cluster", &self.config.is_cluster())
            .finish_non_exhaustive()
    }
}

impl Infra {
    /// Connects what the configuration names: NATS and Redis in a cluster,
    /// nothing (all in memory) otherwise.
    pub async fn connect(config: Config) -> Result<Infra> {
        let _ = ops::metrics(); // install the recorder before anything is counted
        let memory_stores = Arc::new(MemoryStores::default());
        let (orders, stock, payments): (
            Arc<dyn OrderStore>,
            Arc<dyn StockStore>,
            Arc<dyn PaymentStore>,
        ) = match &config.redis {
            Some(url) => {
                let s = RedisStores::connect(url).await?;
                (Arc::new(s.clone()), Arc::new(s.clone()), Arc::new(s))
            }
            None => (memory_stores.clone(), memory_stores.clone(), memory_stores),
        };
        let redis = match &config.redis {
            Some(url) => Some(RedisStore::connect(RedisOptions::new(url.clone())).await?),
            None => None,
        };
        let nats = match &config.nats {
            Some(urls) => Some(
                NatsTransport::connect(NatsOptions::new(urls.clone()).name(config.service.clone()))
                    .await?,
            ),
            None => None,
        };
        Ok(Infra {
            config,
            orders,
            stock,
            payments,
            nats,
            redis,
            memory: Arc::new(MemoryIdempotencyStore::new()),
        })
    }

    /// A builder with the service name, transport, stores and the shared
    /// behaviors (tracing, metrics, retry of transient failures). Message
    /// types declared `#[catga(idempotent)]` run once per message id, with
    /// Redis (or memory) keeping claims, results and the outbox.
    pub fn builder(&self) -> CatgaBuilder {
        let mut b = Catga::builder()
            .service(self.config.service.clone())
            .behavior(Tracing::new())
            .behavior(catga::behavior::metrics::Metrics)
            .behavior(Retry::new(3).backoff(Duration::from_millis(50), Duration::from_secs(1)))
            .request_timeout(Duration::from_secs(10))
            .shutdown_grace(self.config.shutdown_grace);
        if let Some(nats) = &self.nats {
            b = b.transport(nats.clone());
        }
        // A claim left by a killed copy blocks its key for one lease.
        let settings = |i: Idempotency| {
            i.lease(Duration::from_secs(10))
                .wait(Duration::from_secs(5))
        };
        match &self.redis {
            Some(redis) => b
                .idempotency_with(redis.clone(), settings)
                .lock_store(redis.clone())
                .saga_store(redis.clone()),
            None => b.idempotency_with(self.memory.clone(), settings),
        }
    }

    /// Sets initial stock where missing.
    pub async fn seed_stock(&self) -> Result<()> {
        for (sku, qty) in &self.config.seed_stock {
            self.stock.seed(sku, *qty).await?;
        }
        Ok(())
    }

    /// Serves `api` for the started `peer` (its admission gate's counts, if
    /// any, go to `/metrics`), plus the health and metrics endpoints
    /// until Ctrl-C or SIGTERM, then shuts down gracefully: HTTP stops taking
    /// requests, leader tasks hand over, the outbox is flushed, NATS drains.
    pub async fn serve(
        &self,
        peer: Peer,
        api: Router,
        admission: Option<catga_axum::AdmissionStats>,
    ) -> Result<()> {
        let peer = Arc::new(peer);
        let probe = Probe {
            peer: peer.clone(),
            store: self.stock.clone(),
            nats: self.nats.clone(),
            admission,
        };
        let app = api.merge(ops::router(probe));
        let listener = tokio::net::TcpListener::bind(self.config.http)
            .await
            .map_err(|e| Error::transport(format!("cannot listen on {}: {e}", self.config.http)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::transport(e.to_string()))?;
        println!(
            "{} listening on http://{addr} ({})",
            self.config.service,
            if self.config.is_cluster() {
                "cluster"
            } else {
                "embedded, in memory"
            }
        );
        tracing::info!(%addr, service = %self.config.service, "serving");
        // One grace for the whole stop, from the signal: HTTP requests in
        // flight first, then the mediator with what is left of it.
        let grace = self.config.shutdown_grace;
        let signalled = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
        let stop = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (signalled.clone(), stop.clone());
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            ops::shutdown_signal().await;
            let _ = s.set(tokio::time::Instant::now());
            n.notify_one();
        });
        tokio::select! {
            served = server => {
                served.map_err(|e| Error::transport(format!("HTTP server failed: {e}")))?;
            }
            () = async {
                stop.notified().await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "HTTP requests still in flight at the end of the grace; leaving them"),
        }
        let since = signalled.get().map_or(Duration::ZERO, |at| at.elapsed());
        let left = grace.saturating_sub(since).max(Duration::from_secs(1));
        peer.shutdown_within(left).await
    }
}
