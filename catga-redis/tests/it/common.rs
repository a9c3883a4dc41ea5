use std::time::Duration;

use catga_core::{Event, Message, Request};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{RedisCluster, RedisServer};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

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

/// Waits until `check` holds, failing after a generous deadline.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
