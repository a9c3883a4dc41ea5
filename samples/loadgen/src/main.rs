//! Run with `cargo run -p loadgen --release -- <command>` after building the
//! services (`cargo build --release -p order-service -p inventory-service -p payment-service`).
//!
//! Commands:
//! - `chaos [--copies N] [--orders K] [--rate R] [--no-kill] [--pause-payments S]
//!   [--pause-every-payment-copy] [--pause-leader S] [--restart-redis]`: start
//!   the loopback topology, drive K orders at R per second, SIGKILL one
//!   order-service copy and one NATS node mid-run (unless `--no-kill`), SIGSTOP
//!   all payment copies but one (or every one) for S seconds, SIGSTOP the saga coordinator's copy for S seconds, restart Redis;
//!   audit (orders, conservation of money and stock, `OrderPaid` once per paid
//!   order, sagas finished), print JSON, stop everything.
//! - `overload [--copies N] [--measure S] [--hold S] [--deadline-ms MS]
//!   [--start-rate R] [--throttle]`: start the loopback topology, measure the
//!   unloaded latency and the capacity (orders paid within the deadline per
//!   second; open-loop offers from R per second, a quarter more every S
//!   seconds, until the shop falls behind), then offer 2× and 4× the capacity
//!   for `--hold` seconds each (default 60); print goodput, p99 of accepted
//!   orders and shed attempts per phase, and the conservation audit, as JSON.
//!   With `--throttle` the client also throttles itself while most of what it
//!   sends is shed (client-side adaptive throttling, `drive::Throttle`).
//! - `topology [--copies N]`: start the loopback topology and keep it up until
//!   Ctrl-C or SIGTERM (then every copy is stopped), printing the
//!   order-service URLs.
//! - `drive --url URL[,URL..] --redis URL [--orders K] [--rate R]`: drive and
//!   audit a deployment that is already running (e.g. docker compose).

use std::time::Duration;

use loadgen::drive::{self, Load};
use loadgen::{Chaos, topology};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name} takes a number, not `{v}`")),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args).await {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

async fn run(args: &[String]) -> Result<(), String> {
    let command = args.first().map(String::as_str).unwrap_or("help");
    let copies = number(args, "--copies", 3usize)?;
    let load = Load {
        orders: number(args, "--orders", 300usize)?,
        rate: number(args, "--rate", 50.0f64)?,
        ..Load::default()
    };
    match command {
        "chaos" => {
            let kill = !args.iter().any(|a| a == "--no-kill");
            let seconds = |name: &str| -> Result<Option<Duration>, String> {
                Ok(flag(args, name)
                    .map(|_| number(args, name, 0.0f64))
                    .transpose()?
                    .map(Duration::from_secs_f64))
            };
            let report = loadgen::chaos(
                copies,
                load,
                Chaos {
                    kill_copy: kill,
                    kill_nats: kill,
                    pause_payments: seconds("--pause-payments")?,
                    pause_every_payment_copy: args
                        .iter()
                        .any(|a| a == "--pause-every-payment-copy"),
                    pause_leader: seconds("--pause-leader")?,
                    restart_redis: args.iter().any(|a| a == "--restart-redis"),
                },
            )
            .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            if !report.ok {
                return Err("the audit failed".into());
            }
            Ok(())
        }
        "overload" => {
            let defaults = loadgen::overload::Overload::default();
            let o = loadgen::overload::Overload {
                copies: number(args, "--copies", 1usize)?,
                measure: Duration::from_secs_f64(number(args, "--measure", 20.0f64)?),
                hold: Duration::from_secs_f64(number(args, "--hold", 60.0f64)?),
                deadline: Duration::from_millis(number(args, "--deadline-ms", 2000u64)?),
                start_rate: number(args, "--start-rate", defaults.start_rate)?,
                throttle: args.iter().any(|a| a == "--throttle"),
                ..defaults
            };
            let report = loadgen::overload::run(&o).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            if !report.ok {
                return Err("overload targets not met (see the report)".into());
            }
            Ok(())
        }
        "topology" => {
            let mut topo = topology::Topology::start(&topology::bin_dir(), copies, "book=1000000")?;
            println!("order-service copies: {}", topo.order_urls().join(" "));
            println!("NATS: {}", topo.nats.urls().join(","));
            println!("Redis: {}", topo.redis.url());
            println!("service logs: {}", topo.log_dir().display());
            println!("Ctrl-C (or SIGTERM) stops everything");
            shop_common::ops::shutdown_signal().await;
            let clean = topo.stop();
            println!("{clean} copies stopped cleanly");
            Ok(())
        }
        "drive" => {
            let urls: Vec<String> = flag(args, "--url")
                .ok_or("drive needs --url")?
                .split(',')
                .map(str::to_owned)
                .collect();
            let redis = flag(args, "--redis").ok_or("drive needs --redis (for the audit)")?;
            let (outcomes, elapsed) = drive::run(urls.clone(), &load, async {}).await;
            let report = drive::audit(&urls, &redis, &outcomes, elapsed, &load).await;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        }
        _ => Err(
            "usage: loadgen chaos|overload|topology|drive [options] (see the crate docs)".into(),
        ),
    }
}
