use std::sync::Arc;
use std::time::Duration;

use catga_core::{Event, Message, Request};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{RedisCluster, RedisServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Charge {
    pub(crate) cents: u64,
    pub(crate) fail: bool,
}
impl Message for Charge {
    const NAME: &'static str = "test.Charge";
}
impl Request for Charge {
    type Response = String;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Charged {
    pub(crate) cents: u64,
}
impl Message for Charged {
    const NAME: &'static str = "test.Charged";
}
impl Event for Charged {}

/// A Redis to test against: one node or a three-master cluster.
pub(crate) enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub(crate) fn single() -> Backend {
        Backend::Single(RedisServer::start())
    }

    pub(crate) fn cluster() -> Backend {
        Backend::Cluster(RedisCluster::start())
    }

    pub(crate) fn options(&self) -> RedisOptions {
        match self {
            Backend::Single(s) => RedisOptions::new(s.url()),
            Backend::Cluster(c) => RedisOptions::cluster(c.urls()),
        }
    }

    pub(crate) async fn store(&self) -> RedisStore {
        RedisStore::connect(self.options()).await.unwrap()
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Single(_) => "single node",
            Backend::Cluster(_) => "cluster",
        }
    }
}

/// Waits until `check` holds, failing after 30 s.
pub(crate) async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(30), check).await;
}

/// A peer on its own runtime, so killing it is like killing a process: its
/// tasks stop where they are and release nothing.
pub(crate) struct Isolated {
    runtime: Option<tokio::runtime::Runtime>,
    peer: Option<Arc<catga_core::Peer>>,
    pub(crate) mediator: catga_core::Mediator,
}

impl Isolated {
    pub(crate) async fn start<F, Fut>(make: F) -> Isolated
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = catga_core::CatgaBuilder> + Send + 'static,
    {
        Isolated::named("peer", make).await
    }

    /// Like [`Isolated::start`]; the runtime's threads are named `name`.
    pub(crate) async fn named<F, Fut>(name: &str, make: F) -> Isolated
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = catga_core::CatgaBuilder> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        let peer = runtime
            .spawn(async move { Arc::new(make().await.start().await.unwrap()) })
            .await
            .unwrap();
        Isolated {
            runtime: Some(runtime),
            mediator: peer.mediator().clone(),
            peer: Some(peer),
        }
    }

    /// Runs `fut` on the peer's runtime (it dies with the peer); `None` when the
    /// peer is dead already.
    pub(crate) fn spawn(
        &self,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<()> {
        self.runtime.as_ref().map(|rt| drop(rt.spawn(fut)))
    }

    /// Dies without releasing anything.
    pub(crate) fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        // Nothing of a killed peer runs again, not even its drop.
        std::mem::forget(self.peer.take());
    }

    /// Stops gracefully (releases locks, drains).
    pub(crate) async fn stop(&mut self) {
        let Some(peer) = self.peer.clone() else {
            return;
        };
        if let Some(rt) = &self.runtime {
            rt.spawn(async move { peer.shutdown().await })
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.kill();
    }
}
