//! Load loops for the benchmark binaries: the same driver for Catga and for the
//! bare client it is compared with.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Throughput and latency of one measured run.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Operations per second over the measured time.
    pub per_sec: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
}

/// Runs `in_flight` loops of `call` for `warm_up + measure`, recording each
/// operation started after the warm-up.
pub async fn drive<F, Fut>(in_flight: usize, warm_up: Duration, measure: Duration, call: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t = Instant::now();
                if t - start > warm_up + measure {
                    break;
                }
                call().await;
                if t - start > warm_up {
                    lat.push(t.elapsed().as_nanos() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |n| *n as f64 / 1000.0)
    };
    Stats {
        per_sec: all.len() as f64 / measure.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// Prints one JSON line comparing Catga with the bare client.
pub fn report(case: &str, in_flight: usize, catga: &Stats, bare: &Stats) {
    println!(
        "{{\"case\":\"{case}\",\"in_flight\":{in_flight},\"catga_per_sec\":{:.0},\"bare_per_sec\":{:.0},\"ratio\":{:.3},\"catga_p50_us\":{:.1},\"bare_p50_us\":{:.1},\"p50_delta_us\":{:.1},\"catga_p99_us\":{:.1},\"bare_p99_us\":{:.1}}}",
        catga.per_sec,
        bare.per_sec,
        catga.per_sec / bare.per_sec,
        catga.p50_us,
        bare.p50_us,
        catga.p50_us - bare.p50_us,
        catga.p99_us,
        bare.p99_us,
    );
}

/// The middle of several runs of the same case, each figure taken separately
/// (runs alternate with the bare client's, so a noisy moment on a shared machine
/// does not decide a comparison).
pub fn median(runs: &[Stats]) -> Stats {
    let mid = |f: fn(&Stats) -> f64| middle(runs.iter().map(f).collect());
    Stats {
        per_sec: mid(|s| s.per_sec),
        p50_us: mid(|s| s.p50_us),
        p99_us: mid(|s| s.p99_us),
    }
}

/// The middle value (0 for none).
pub fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Whether a bench binary should run `case`: all cases unless
/// `CATGA_BENCH_CASE` names one (for profiling).
pub fn wants(case: &str) -> bool {
    std::env::var("CATGA_BENCH_CASE").map_or(true, |c| c == case)
}
