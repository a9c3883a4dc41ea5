//! A `#[handler]` function taking its state as a third parameter: found among
//! the builder's resources, and missing state is a build error naming the
//! handler, not a failure at the first message. (Its own test binary: every
//! `#[handler]` of a binary is auto-registered.)

use std::sync::atomic::{AtomicU64, Ordering};

use catga::{Catga, Context, ErrorKind, Request, Result, handler};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "state.Deposit", response = u64)]
struct Deposit {
    cents: u64,
}

/// The handler's state.
#[derive(Default)]
struct Ledger {
    total: AtomicU64,
}

#[handler]
async fn deposit(cmd: &Deposit, _: &Context, ledger: &Ledger) -> Result<u64> {
    Ok(ledger.total.fetch_add(cmd.cents, Ordering::SeqCst) + cmd.cents)
}

#[tokio::test]
async fn a_handler_gets_its_state_from_the_resources() {
    let m = Catga::builder()
        .resource(Ledger::default())
        .auto_register()
        .build()
        .unwrap();
    assert_eq!(m.send(Deposit { cents: 5 }).await.unwrap(), 5);
    assert_eq!(m.send(Deposit { cents: 7 }).await.unwrap(), 12);
}

#[test]
fn missing_state_is_a_build_error_naming_the_handler() {
    let e = Catga::builder().auto_register().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("deposit"), "{e}");
    assert!(e.message().contains("Ledger"), "{e}");
}
