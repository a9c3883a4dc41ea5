//! Dispatch through an auto-registered `#[handler]` costs the same as through an
//! explicitly registered one.
//!
//! Run with `cargo bench -p catga --bench auto_register`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use catga::{Catga, Context, Request, RequestHandler, Result, handler};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Request)]
#[catga(name = "bench.Add", response = i64)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Default)]
struct AddHandler;

#[handler]
impl RequestHandler<Add> for AddHandler {
    async fn handle(&self, r: &Add, _: &Context) -> Result<i64> {
        Ok(r.a + r.b)
    }
}

fn dispatch(c: &mut Criterion) {
    let auto = Catga::builder().auto_register().build().unwrap();
    let explicit = Catga::builder()
        .request_handler(AddHandler)
        .build()
        .unwrap();
    let req = || black_box(Add { a: 1, b: 2 });
    assert_eq!(auto.send(req()).now_or_never().unwrap().unwrap(), 3);
    let mut g = c.benchmark_group("registration");
    g.bench_function("send_explicit", |b| {
        b.iter(|| black_box(explicit.send(req()).now_or_never()))
    });
    g.bench_function("send_auto_registered", |b| {
        b.iter(|| black_box(auto.send(req()).now_or_never()))
    });
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
