//! `docs/examples/client.py`, a client written from docs/protocol.md alone,
//! against a real service: requests (a retry, a refusal, a malformed one, no
//! responders) and an event. Skipped, saying so, when Python or nats-py is
//! missing (`scripts/test.sh` installs nats-py).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use catga_core::store::MemoryIdempotencyStore;
use catga_core::{Catga, Error, Event, Message, Request};
use catga_test_support::NatsServer;
use serde::{Deserialize, Serialize};

use crate::common::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}
impl Message for Add {
    const NAME: &'static str = "demo.Add";
    const IDEMPOTENT: bool = true;
}
impl Request for Add {
    type Response = i64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Added {
    sum: i64,
}
impl Message for Added {
    const NAME: &'static str = "demo.Added";
}
impl Event for Added {}

fn python_with_nats() -> bool {
    Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_protocol_talks_to_a_service() {
    if !python_with_nats() {
        eprintln!("SKIPPED: python3 with nats-py is not installed (pip install nats-py)");
        return;
    }
    let server = NatsServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let heard = Arc::new(AtomicUsize::new(0));
    let (r, h) = (runs.clone(), heard.clone());
    let peer = Catga::builder()
        .service("demo")
        .transport(connect(&[server.url()]).await)
        .idempotency(MemoryIdempotencyStore::new())
        .request_fn(move |add: Add, _| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                if add.a < 0 {
                    return Err(Error::handler("demo.negative", "a must not be negative"));
                }
                Ok(add.a + add.b)
            }
        })
        .event_fn(move |e: Added, _| {
            let h = h.clone();
            async move {
                if e.sum == 5 {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/client.py");
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "add True 5",
            "retry True 5",
            "refused False handler demo.negative",
            "malformed False codec",
            "no_responders",
            "published",
        ],
        "{out:?}"
    );
    // The retry got the stored answer: the handler ran for the first add and
    // the refused one only (the malformed one never decoded).
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    eventually("the Python event", || heard.load(Ordering::SeqCst) == 1).await;
    peer.shutdown().await.unwrap();
}
