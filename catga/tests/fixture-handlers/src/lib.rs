//! Messages and `#[handler]`s in a crate of their own, to prove that
//! `auto_register()` finds handlers across crates.

use catga::{Context, Event, Request, Result, handler};
use serde::{Deserialize, Serialize};

/// Doubles a number (handled by a `#[handler]` function in this crate).
#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "fixture.Double", response = i64)]
pub struct Double(pub i64);

/// Something happened in the fixture crate.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "fixture.Noted")]
pub struct Noted(pub String);

#[handler]
async fn double(cmd: &Double, _ctx: &Context) -> Result<i64> {
    Ok(cmd.0 * 2)
}

#[handler]
async fn note(event: &Noted, ctx: &Context) -> Result<()> {
    let log = ctx.resource::<std::sync::Mutex<Vec<String>>>()?;
    log.lock().unwrap().push(format!("fixture saw {}", event.0));
    Ok(())
}

/// Calling any function of this crate makes sure it is linked, and with it its
/// handlers (see `CatgaBuilder::auto_register`).
pub fn link() {}
