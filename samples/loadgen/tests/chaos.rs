//! The scale-out acceptance test: the loopback topology (3 NATS nodes, Redis
//! with AOF, 3 copies of each service), a few hundred orders over HTTP, one
//! order-service copy SIGKILLed mid-run. Nothing may be lost or applied twice,
//! and every payment saga must finish.
//!
//! The service binaries must be built next to this test (`cargo test
//! --workspace` does that; alone, build them first or set `CATGA_BIN_DIR`).

use loadgen::Chaos;
use loadgen::drive::Load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_copies_each_one_killed_mid_run_lose_and_duplicate_nothing() {
    let load = Load {
        orders: 300,
        rate: 60.0,
        ..Load::default()
    };
    let report = loadgen::chaos(
        3,
        load,
        Chaos {
            kill_copy: true,
            kill_nats: false,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.accepted, 300, "every order was accepted: {report:?}");
    assert_eq!(report.orders_lost, 0, "{report:?}");
    assert_eq!(
        report.orders_duplicated, 0,
        "stock and payment applied once per order: {report:?}"
    );
    assert_eq!(report.effects_missing, 0, "{report:?}");
    assert_eq!(
        report.sagas_unfinished, 0,
        "every saga finished: {report:?}"
    );
    assert_eq!(report.paid + report.rejected, 300, "{report:?}");
    assert!(report.ok);
}
