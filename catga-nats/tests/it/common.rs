use std::time::Duration;

use catga_core::{Event, Message, Request};
use catga_nats::{NatsOptions, NatsTransport};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Add {
    pub(crate) a: i64,
    pub(crate) b: i64,
}
impl Message for Add {
    const NAME: &'static str = "test.Add";
}
impl Request for Add {
    type Response = i64;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fail {
    pub(crate) code: String,
}
impl Message for Fail {
    const NAME: &'static str = "test.Fail";
}
impl Request for Fail {
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sleep {
    pub(crate) millis: u64,
}
impl Message for Sleep {
    const NAME: &'static str = "test.Sleep";
}
impl Request for Sleep {
    type Response = u64;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Blob {
    pub(crate) data: String,
}
impl Message for Blob {
    const NAME: &'static str = "test.Blob";
}
impl Request for Blob {
    type Response = usize;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Happened {
    pub(crate) n: u32,
}
impl Message for Happened {
    const NAME: &'static str = "test.Happened";
}
impl Event for Happened {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) n: u32,
}
impl Message for Stored {
    const NAME: &'static str = "test.Stored";
}
impl Event for Stored {}

pub(crate) async fn connect(urls: &[String]) -> NatsTransport {
    NatsTransport::connect(options(urls)).await.unwrap()
}

/// A mediator with no handlers of its own: it sends to the peers on `urls`.
pub(crate) async fn client(urls: &[String]) -> catga_core::Mediator {
    catga_core::Catga::builder()
        .transport(connect(urls).await)
        .build()
        .unwrap()
}

pub(crate) fn options(urls: &[String]) -> NatsOptions {
    NatsOptions::new(urls.iter().cloned()).max_reconnect_delay(Duration::from_millis(200))
}

/// Waits until `check` holds, failing after 30 s.
pub(crate) async fn eventually(what: &str, check: impl FnMut() -> bool) {
    catga_test_support::eventually(what, Duration::from_secs(30), check).await;
}
