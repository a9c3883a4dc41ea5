//! Load and chaos for the sample shop.
//!
//! - [`topology`]: the docker-compose topology as loopback processes (3 NATS
//!   nodes, Redis with AOF, N copies of each service).
//! - [`drive`]: orders placed over HTTP at a set rate, retried across copies with
//!   an idempotency key, then an audit: orders lost, effects duplicated, sagas
//!   unfinished, latency, throughput and the longest gap without an order.
//! - [`chaos`]: both together, killing a service copy and a NATS node mid-run.
//! - [`overload`]: capacity, then offers of 2× and 4× of it: goodput, latency
//!   of what was accepted, what was shed, and the same audit.

pub mod drive;
pub mod overload;
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
    /// SIGSTOP payment-service copies, a tenth of the way in, for this long
    /// (longer than the charge step's whole budget, 30 s), then SIGCONT. All
    /// copies but one, or every copy with `pause_every_payment_copy`, which
    /// makes sagas give up on charges whose outcome they cannot know and
    /// refund them while the charges are still in the paused copies.
    pub pause_payments: Option<Duration>,
    /// Pause every payment copy, not all but one.
    pub pause_every_payment_copy: bool,
    /// SIGSTOP the order-service copy that coordinates the payment sagas, a
    /// third of the way in, for this long (longer than its 5 s lease, so
    /// another copy takes over while it sleeps), then SIGCONT.
    pub pause_leader: Option<Duration>,
    /// Restart Redis (SIGKILL, then start it again on its append-only file)
    /// two thirds of the way in.
    pub restart_redis: bool,
}

/// The saga coordinator's leader task in the order service.
const PAYMENT_SAGA_TASK: &str = "catga.saga.orders.payment";

/// SIGSTOPs `pids` for `pause`, then SIGCONTs them.
async fn pause(what: &str, pids: &[u32], pause: Duration) {
    for pid in pids {
        catga_test_support::signal(*pid, "STOP");
    }
    eprintln!("chaos: SIGSTOPped {what} ({pids:?}) for {pause:?}");
    tokio::time::sleep(pause).await;
    for pid in pids {
        catga_test_support::signal(*pid, "CONT");
    }
    eprintln!("chaos: SIGCONTed {what}");
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
    let Topology {
        copies,
        nats,
        redis: redis_server,
        ..
    } = &mut topo;
    let copies: &[topology::Copy] = copies;
    let payment_pids: Vec<u32> = copies
        .iter()
        .filter(|c| c.role == Role::Payment)
        .skip(usize::from(!chaos.pause_every_payment_copy))
        .filter_map(topology::Copy::pid)
        .collect();
    let order_copies: Vec<&topology::Copy> =
        copies.iter().filter(|c| c.role == Role::Order).collect();
    let leader_pid = || {
        order_copies
            .iter()
            .find(|c| c.leading().iter().any(|t| t == PAYMENT_SAGA_TASK))
            .and_then(|c| c.pid())
    };
    let killing = async {
        if chaos.kill_copy {
            tokio::time::sleep(submit / 3).await;
            if let Some(copy) = order_copies.first()
                && let Some(pid) = copy.pid()
            {
                catga_test_support::signal(pid, "KILL");
                eprintln!("chaos: SIGKILLed order-service on port {}", copy.port);
            }
        }
        if chaos.kill_nats {
            tokio::time::sleep(submit / 6).await;
            nats.kill(0);
            eprintln!("chaos: SIGKILLed NATS node 1");
        }
    };
    let pausing_payments = async {
        if let Some(d) = chaos.pause_payments {
            tokio::time::sleep(submit / 10).await;
            pause("payment-service copies", &payment_pids, d).await;
        }
    };
    let pausing_leader = async {
        if let Some(d) = chaos.pause_leader {
            tokio::time::sleep(submit / 3).await;
            match leader_pid() {
                Some(pid) => pause("the saga coordinator's copy", &[pid], d).await,
                None => eprintln!("chaos: no copy leads the payment sagas; none paused"),
            }
        }
    };
    let restarting = async {
        if chaos.restart_redis {
            tokio::time::sleep(submit * 2 / 3).await;
            tokio::task::block_in_place(|| redis_server.restart());
            eprintln!("chaos: restarted Redis (AOF)");
        }
    };
    let breaker = async {
        tokio::join!(killing, pausing_payments, pausing_leader, restarting);
    };
    let (outcomes, elapsed) = drive::run(urls.clone(), &load, breaker).await;
    // A killed copy is reaped here (its child handle still holds it).
    for copy in topo.copies.iter_mut() {
        copy.is_running();
    }
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
