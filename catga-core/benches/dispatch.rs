//! Dispatch cost of the mediator, in time and heap allocations per operation.
//!
//! Run with `cargo bench -p catga-core --bench dispatch`.
//!
//! Cases: a direct call of the handler's logic (baseline), `send` with no
//! behaviors, `send` through three pass-through behaviors added to the
//! builder and the same three in a `Stack` around the handler, and `publish`
//! to three handlers. Handlers complete without waiting, so each future is polled once
//! (`now_or_never`), which measures Catga rather than an executor.
//!
//! Each case is measured in two shapes. Alone: one dispatch's future is made
//! and handed to `now_or_never`, which moves it (a few hundred bytes) into
//! its own frame and polls it there. Awaited: an async block awaits
//! [`AWAITED`] dispatches one after the other, as a handler or a service's
//! code does, and the time is per dispatch; the caller's future holds each
//! dispatch's in place, so nothing is moved.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catga_core::behavior::{Behavior, Envelope, Next, Reply, Stack};
use catga_core::{Catga, Context, Event, EventHandler, Message, Request, RequestHandler, Result};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

/// Counts every allocation made by the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// The one unsafe block in the workspace: a counting allocator for this bench.
// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}
impl Message for Add {
    const NAME: &'static str = "bench.Add";
}
impl Request for Add {
    type Response = i64;
}

#[derive(Clone, Serialize, Deserialize)]
struct Added {
    sum: i64,
}
impl Message for Added {
    const NAME: &'static str = "bench.Added";
}
impl Event for Added {}

async fn add(request: &Add) -> Result<i64> {
    Ok(request.a + request.b)
}

struct AddHandler;
impl RequestHandler<Add> for AddHandler {
    async fn handle(&self, request: &Add, _: &Context) -> Result<i64> {
        add(request).await
    }
}

struct Sink;
impl EventHandler<Added> for Sink {
    async fn handle(&self, event: &Added, _: &Context) -> Result<()> {
        black_box(event.sum);
        Ok(())
    }
}

struct PassThrough;
impl Behavior for PassThrough {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        next.run(env).await
    }
}

/// Dispatches awaited one after the other in the awaited shape.
const AWAITED: u32 = 16;

/// Criterion's time for `iters` runs of `op`, each of [`AWAITED`]
/// dispatches, divided by that count: the time of one dispatch.
fn per_dispatch(iters: u64, mut op: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        op();
    }
    started.elapsed() / AWAITED
}

/// Average allocations of one `op`, over many runs.
fn allocations_per_op(mut op: impl FnMut()) -> f64 {
    const RUNS: u64 = 10_000;
    op();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..RUNS {
        op();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / RUNS as f64
}

fn dispatch(c: &mut Criterion) {
    let plain = Catga::builder()
        .request_handler(AddHandler)
        .build()
        .unwrap();
    let layered = Catga::builder()
        .behavior(PassThrough)
        .behavior(PassThrough)
        .behavior(PassThrough)
        .request_handler(AddHandler)
        .build()
        .unwrap();
    let stacked = Catga::builder()
        .request_handler(
            Stack::new()
                .with(PassThrough)
                .with(PassThrough)
                .with(PassThrough)
                .around(AddHandler),
        )
        .build()
        .unwrap();
    let events = Catga::builder()
        .event_handler(Sink)
        .event_handler(Sink)
        .event_handler(Sink)
        .build()
        .unwrap();
    let req = || black_box(Add { a: 1, b: 2 });

    let direct = || {
        let r = req();
        black_box(add(&r).now_or_never());
    };
    let send = || {
        black_box(plain.send(req()).now_or_never());
    };
    let send3 = || {
        black_box(layered.send(req()).now_or_never());
    };
    let stacked3 = || {
        black_box(stacked.send(req()).now_or_never());
    };
    let publish3 = || {
        black_box(events.publish(Added { sum: 3 }).now_or_never());
    };
    let send_awaited = || {
        let run = async {
            for _ in 0..AWAITED {
                black_box(plain.send(req()).await?);
            }
            Ok::<_, catga_core::Error>(())
        };
        black_box(run.now_or_never());
    };
    let send3_awaited = || {
        let run = async {
            for _ in 0..AWAITED {
                black_box(layered.send(req()).await?);
            }
            Ok::<_, catga_core::Error>(())
        };
        black_box(run.now_or_never());
    };
    let stacked3_awaited = || {
        let run = async {
            for _ in 0..AWAITED {
                black_box(stacked.send(req()).await?);
            }
            Ok::<_, catga_core::Error>(())
        };
        black_box(run.now_or_never());
    };
    let publish3_awaited = || {
        let run = async {
            for _ in 0..AWAITED {
                events.publish(black_box(Added { sum: 3 })).await?;
            }
            Ok::<_, catga_core::Error>(())
        };
        black_box(run.now_or_never());
    };
    assert_eq!(plain.send(req()).now_or_never().unwrap().unwrap(), 3);
    assert_eq!(layered.send(req()).now_or_never().unwrap().unwrap(), 3);
    assert_eq!(stacked.send(req()).now_or_never().unwrap().unwrap(), 3);
    events
        .publish(Added { sum: 3 })
        .now_or_never()
        .unwrap()
        .unwrap();

    let mut g = c.benchmark_group("dispatch");
    g.bench_function("direct_call", |b| b.iter(direct));
    g.bench_function("send_no_behaviors", |b| b.iter(send));
    g.bench_function("send_3_behaviors", |b| b.iter(send3));
    g.bench_function("send_3_behaviors_stacked", |b| b.iter(stacked3));
    g.bench_function("publish_3_handlers", |b| b.iter(publish3));
    g.bench_function("awaited/send_no_behaviors", |b| {
        b.iter_custom(|n| per_dispatch(n, send_awaited))
    });
    g.bench_function("awaited/send_3_behaviors", |b| {
        b.iter_custom(|n| per_dispatch(n, send3_awaited))
    });
    g.bench_function("awaited/send_3_behaviors_stacked", |b| {
        b.iter_custom(|n| per_dispatch(n, stacked3_awaited))
    });
    g.bench_function("awaited/publish_3_handlers", |b| {
        b.iter_custom(|n| per_dispatch(n, publish3_awaited))
    });
    g.finish();

    for (name, allocs) in [
        ("direct_call", allocations_per_op(direct)),
        ("send_no_behaviors", allocations_per_op(send)),
        ("send_3_behaviors", allocations_per_op(send3)),
        ("send_3_behaviors_stacked", allocations_per_op(stacked3)),
        ("publish_3_handlers", allocations_per_op(publish3)),
    ] {
        println!("{{\"case\":\"{name}\",\"allocations_per_op\":{allocs:.2}}}");
    }
    for (name, allocs) in [
        (
            "awaited/send_no_behaviors",
            allocations_per_op(send_awaited),
        ),
        (
            "awaited/send_3_behaviors",
            allocations_per_op(send3_awaited),
        ),
        (
            "awaited/send_3_behaviors_stacked",
            allocations_per_op(stacked3_awaited),
        ),
        (
            "awaited/publish_3_handlers",
            allocations_per_op(publish3_awaited),
        ),
    ] {
        let allocs = allocs / f64::from(AWAITED);
        println!("{{\"case\":\"{name}\",\"allocations_per_op\":{allocs:.2}}}");
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
