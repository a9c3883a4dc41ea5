//! The NATS service API (ADR-32) over a real nats-server: what `nats micro
//! ls/info/stats` asks, asked with a raw client.

use catga_core::{Catga, Error, Event, Message, Request};
use catga_test_support::NatsServer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::*;

/// A command served from a stored queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Archive {
    n: u64,
}
impl Message for Archive {
    const NAME: &'static str = "test.Archive";
}
impl Request for Archive {
    type Response = ();
    const DURABLE: bool = true;
}

/// An event kept by JetStream.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Archived {
    n: u64,
}
impl Message for Archived {
    const NAME: &'static str = "test.Archived";
}
impl Event for Archived {
    const RELIABLE: bool = true;
}

/// The endpoint `name` of an INFO or STATS answer.
fn endpoint(answer: &Value, name: &str) -> Value {
    answer["endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {name}: {answer}"))
}

async fn ask(raw: &async_nats::Client, subject: &str) -> Value {
    let reply = raw.request(subject.to_owned(), "".into()).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answer_ping_info_and_stats_of_the_service_api() {
    let server = NatsServer::start();
    let peer = Catga::builder()
        .service("calc")
        .transport(
            catga_nats::NatsTransport::connect(options(&[server.url()]).service_version("1.2.3"))
                .await
                .unwrap(),
        )
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .request_fn(|f: Fail, _| async move { Err::<(), _>(Error::handler(f.code, "refused")) })
        .event_fn(|_: Happened, _| async { Ok(()) })
        .request_fn(|_: Archive, _| async { Ok(()) })
        .event_fn(|_: Archived, _| async { Ok(()) })
        .start()
        .await
        .unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();

    let ping = ask(&raw, "$SRV.PING.calc").await;
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "calc");
    assert_eq!(ping["version"], "1.2.3");
    let id = ping["id"].as_str().unwrap().to_owned();
    assert_eq!(id, peer.peer_id().simple().to_string());

    let info = ask(&raw, "$SRV.INFO").await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    let endpoints = info["endpoints"].as_array().unwrap();
    let add = endpoints
        .iter()
        .find(|e| e["metadata"]["catga.message"] == "test.Add")
        .unwrap();
    assert_eq!(add["name"], "test_Add");
    assert_eq!(add["subject"], "catga.req.test.Add");
    assert_eq!(add["queue_group"], "catga.test.Add");
    assert!(
        endpoints
            .iter()
            .any(|e| e["subject"] == "catga.evt.test.Happened" && e["queue_group"] == "calc")
    );

    let caller = client(&[server.url()]).await;
    for i in 0..3 {
        assert_eq!(caller.send(Add { a: i, b: 1 }).await.unwrap(), i + 1);
    }
    caller
        .send(Fail {
            code: "calc.no".into(),
        })
        .await
        .unwrap_err();
    let stats = ask(&raw, &format!("$SRV.STATS.calc.{id}")).await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    assert!(stats["started"].as_str().unwrap().ends_with('Z'));
    let of = |name: &str| endpoint(&stats, name);
    assert_eq!(of("test_Add")["num_requests"], 3);
    assert_eq!(of("test_Add")["num_errors"], 0);
    assert_eq!(of("test_Fail")["num_errors"], 1);
    assert!(
        of("test_Fail")["last_error"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    // Stored queues are endpoints too, with their own counts.
    let info = ask(&raw, "$SRV.INFO.calc").await;
    let durable = endpoint(&info, "test_Archive_durable");
    assert_eq!(durable["subject"], "catga.cmd.test.Archive");
    assert_eq!(durable["metadata"]["catga.kind"], "durable command");
    let reliable = endpoint(&info, "test_Archived_reliable");
    assert_eq!(reliable["subject"], "catga.rel.test.Archived");
    assert_eq!(reliable["metadata"]["catga.kind"], "reliable event");
    for n in 0..2 {
        caller.send_durable(Archive { n }).await.unwrap();
    }
    caller.publish(Archived { n: 7 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = ask(&raw, &format!("$SRV.STATS.calc.{id}")).await;
        let count = |name: &str| endpoint(&stats, name)["num_requests"].as_u64();
        if count("test_Archive_durable") == Some(2) && count("test_Archived_reliable") == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored messages not counted: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Another service's name gets no answer from this peer.
    let other = raw
        .request("$SRV.PING.orders".to_owned(), "".into())
        .await
        .unwrap_err();
    assert_eq!(other.kind(), async_nats::RequestErrorKind::NoResponders);
}
