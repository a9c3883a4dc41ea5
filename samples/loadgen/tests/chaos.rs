//! The scale-out acceptance test: the loopback topology (3 NATS nodes, Redis
//! with AOF, 3 copies of each service), a few hundred orders over HTTP, one
//! order-service copy SIGKILLed mid-run. Nothing may be lost or applied twice,
//! and every payment saga must finish.
//!
//! The service binaries must be built next to this test (`cargo test
//! --workspace` does that; alone, build them first or set `CATGA_BIN_DIR`).

use loadgen::Chaos;
use loadgen::drive::Load;

/// Each test runs a whole topology (3 NATS nodes, Redis, 9 service copies):
/// one at a time, so two do not starve each other of the two cores (and of
/// free ports) and time out while starting.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_copies_each_one_killed_mid_run_lose_and_duplicate_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
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
            ..Chaos::default()
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
    assert_eq!(report.money_unbalanced, 0, "{report:?}");
    assert_eq!(report.stock_unbalanced, 0, "{report:?}");
    assert_eq!(report.receipts_wrong, 0, "{report:?}");
    assert_eq!(
        report.sagas_unfinished, 0,
        "every saga finished: {report:?}"
    );
    assert_eq!(report.paid + report.rejected, 300, "{report:?}");
    assert!(report.ok);
}

/// The slow faults, on the same topology: every payment copy paused (SIGSTOP)
/// longer than the charge step's whole budget, so sagas give up on charges
/// whose outcome they cannot know and refund them while the charges wait in
/// the paused copies, to land (or be refused) when they wake; the copy coordinating the sagas paused past its lease, so
/// another takes over while it sleeps; Redis restarted from its append-only
/// file. Audited for conservation: per order, money charged − refunded and
/// stock reserved − released match its final status, `OrderPaid` was received
/// once per paid order, and every saga finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_copies_and_a_redis_restart_keep_money_and_stock_conserved() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let load = Load {
        orders: 240,
        rate: 8.0,
        ..Load::default()
    };
    let report = loadgen::chaos(
        3,
        load,
        Chaos {
            pause_payments: Some(std::time::Duration::from_secs(45)),
            pause_every_payment_copy: true,
            pause_leader: Some(std::time::Duration::from_secs(8)),
            restart_redis: true,
            ..Chaos::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.accepted, 240, "every order was accepted: {report:?}");
    assert_eq!(report.orders_lost, 0, "{report:?}");
    assert_eq!(report.orders_duplicated, 0, "{report:?}");
    assert_eq!(report.money_unbalanced, 0, "{report:?}");
    assert_eq!(report.stock_unbalanced, 0, "{report:?}");
    assert_eq!(report.receipts_wrong, 0, "{report:?}");
    assert_eq!(report.sagas_unfinished, 0, "{report:?}");
    assert!(
        report.rejected > 0,
        "the pause made sagas give up and compensate: {report:?}"
    );
    assert!(report.ok, "{report:?}");
}
