//! catga-nats against real nats-server processes (from catga-test-support).

mod common;
mod discovery;
mod durable;
mod events;
mod faults;
mod inbound;
mod overload;
mod python;
mod requests;
mod tls;
