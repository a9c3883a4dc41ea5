//! Message types shared by the tests.

use catga_core::behavior::validation::Validate;
use catga_core::{Event, Message, Request};
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
    pub(crate) retryable: bool,
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
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Unhandled;
impl Message for Unhandled {
    const NAME: &'static str = "test.Unhandled";
}
impl Request for Unhandled {
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Register {
    pub(crate) email: String,
}
impl Message for Register {
    const NAME: &'static str = "test.Register";
}
impl Request for Register {
    type Response = u32;
}
impl Validate for Register {
    fn validate(&self) -> Result<(), String> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(format!("email `{}` has no @", self.email))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Happened {
    pub(crate) n: u32,
}
impl Message for Happened {
    const NAME: &'static str = "test.Happened";
}
impl Event for Happened {}
