//! catga-redis against real redis-server processes (single node and cluster).

mod common;
mod effectively_once;
mod idempotency;
mod leader;
mod lock;
mod outbox;
mod saga;
