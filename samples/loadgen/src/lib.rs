//! Load and chaos for the sample shop.
//!
//! - [`topology`]: the docker-compose topology as loopback processes (3 NATS
//!   nodes, Redis with AOF, N copies of each service).
//! - [`drive`]: orders placed over HTTP at a set rate, retried across copies with
//!   an idempotency key, then an audit: orders lost, effects duplicated, sagas
//!   unfinished, latency, throughput and the longest gap without an order.
//! - [`chaos`]: both together, killing a service copy and a NATS node mid-run.

pub mod drive;
pub mod topology;

use std::time::Duration;

use drive::{Load, Report};
use topology::{Role, Topology};

/// What to break during a chaos run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chaos {
    /// SIGKILL the first order-service copy a third of the way in.
    pub kill_copy: bool,
    /// SIGKILL the first NATS node half way in.
    pub kill_nats: bool,
}

/// Starts the topology, drives `load` through it while breaking what `chaos`
/// says, audits, and stops everything (SIGTERM; every copy must exit 0).
pub async fn chaos(copies: usize, load: Load, chaos: Chaos) -> Result<Report, String> {
    let bins = topology::bin_dir();
    let seed = format!(
        "book={}",
        load.orders as u64 * u64::from(load.qty) * 10 + 1000
    );
    let mut topo = tokio::task::block_in_place(|| Topology::start(&bins, copies, &seed))?;
    let urls = topo.order_urls();
    let redis = topo.redis.url();
    let submit = Duration::from_secs_f64(load.orders as f64 / load.rate);
    let topo_ref = &mut topo;
    let breaker = async move {
        if chaos.kill_copy {
            tokio::time::sleep(submit / 3).await;
            if let Some(copy) = topo_ref.copy(Role::Order, 0) {
                copy.kill();
                eprintln!("chaos: SIGKILLed order-service on port {}", copy.port);
            }
        }
        if chaos.kill_nats {
            tokio::time::sleep(submit / 6).await;
            topo_ref.nats.kill(0);
            eprintln!("chaos: SIGKILLed NATS node 1");
        }
    };
    let (outcomes, elapsed) = drive::run(urls.clone(), &load, breaker).await;
    let live: Vec<String> = urls
        .iter()
        .filter(|u| {
            topo.copies
                .iter_mut()
                .any(|c| c.role == Role::Order && &c.url() == *u && c.is_running())
        })
        .cloned()
        .collect();
    let report = drive::audit(&live, &redis, &outcomes, elapsed, &load).await;
    let running = topo
        .copies
        .iter_mut()
        .map(|c| c.is_running())
        .filter(|r| *r)
        .count();
    let clean = tokio::task::block_in_place(|| topo.stop());
    if clean != running {
        return Err(format!(
            "{} of {running} service copies did not exit cleanly on SIGTERM (logs in {})",
            running - clean,
            topo.log_dir().display()
        ));
    }
    Ok(report)
}
