use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga_core::{
    Catga, Context, Error, ErrorKind, EventHandler, Metadata, Request, RequestHandler, Result, Uuid,
};
use tokio::sync::Mutex;

use crate::messages::*;

struct Adder;
impl RequestHandler<Add> for Adder {
    async fn handle(&self, r: &Add, _: &Context) -> Result<i64> {
        Ok(r.a + r.b)
    }
}

struct OtherAdder;
impl RequestHandler<Add> for OtherAdder {
    async fn handle(&self, r: &Add, _: &Context) -> Result<i64> {
        Ok(r.a - r.b)
    }
}

#[tokio::test]
async fn send_reaches_the_handler_and_returns_its_response() {
    let m = Catga::builder().request_handler(Adder).build().unwrap();
    assert_eq!(m.send(Add { a: 2, b: 40 }).await.unwrap(), 42);
    assert!(m.handles::<Add>());
}

#[tokio::test]
async fn no_handler_error_names_the_message() {
    let m = Catga::builder().request_handler(Adder).build().unwrap();
    let err = m.send(Unhandled).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoHandler);
    assert!(err.is_no_handler());
    assert_eq!(err.message_name(), Some("test.Unhandled"));
    assert!(err.to_string().contains("test.Unhandled"), "{err}");
}

#[test]
fn duplicate_request_handlers_fail_the_build_naming_both() {
    let err = Catga::builder()
        .request_handler(Adder)
        .request_handler(OtherAdder)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateHandler);
    let text = err.to_string();
    assert!(
        text.contains("Adder") && text.contains("OtherAdder"),
        "{text}"
    );
    assert!(text.contains("test.Add"), "{text}");
}

#[test]
fn two_request_types_with_one_wire_name_fail_the_build() {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Impostor;
    impl catga_core::Message for Impostor {
        const NAME: &'static str = "test.Add";
    }
    impl Request for Impostor {
        type Response = ();
    }
    let err = Catga::builder()
        .request_handler(Adder)
        .request_fn(|_: Impostor, _| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateHandler);
    assert!(err.to_string().contains("Impostor"), "{err}");
}

#[tokio::test]
async fn handler_errors_keep_kind_and_code() {
    let m = Catga::builder()
        .request_fn(|f: Fail, _| async move {
            Err::<(), _>(Error::handler(f.code, "nope").with_retryable(f.retryable))
        })
        .build()
        .unwrap();
    let err = m
        .send(Fail {
            code: "orders.out_of_stock".into(),
            retryable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.code(), Some("orders.out_of_stock"));
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error_and_the_peer_keeps_serving() {
    let m = Catga::builder()
        .request_fn(|a: Add, _| async move {
            if a.a < 0 {
                panic!("negative input {}", a.a);
            }
            Ok(a.a + a.b)
        })
        .build()
        .unwrap();
    let err = m.send(Add { a: -1, b: 0 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.code(), Some("catga.panic"));
    assert!(err.to_string().contains("negative input -1"), "{err}");
    assert_eq!(m.send(Add { a: 1, b: 2 }).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_per_call_timeout_fires_and_names_the_message() {
    let m = Catga::builder()
        .request_fn(|s: Sleep, _| async move {
            tokio::time::sleep(Duration::from_millis(s.millis)).await;
            Ok(())
        })
        .build()
        .unwrap();
    let err = m
        .send_with(
            Sleep { millis: 60_000 },
            Metadata::new().with_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("test.Sleep"), "{err}");
    m.send_with(
        Sleep { millis: 1 },
        Metadata::new().with_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
}

struct Recorder {
    name: &'static str,
    fail: bool,
    seen: Arc<Mutex<Vec<&'static str>>>,
}
impl EventHandler<Happened> for Recorder {
    async fn handle(&self, _: &Happened, _: &Context) -> Result<()> {
        tokio::task::yield_now().await;
        self.seen.lock().await.push(self.name);
        if self.fail {
            Err(Error::handler("test.boom", format!("{} failed", self.name)))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn publish_runs_every_handler_even_when_one_fails() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = |name, fail| Recorder {
        name,
        fail,
        seen: seen.clone(),
    };
    let m = Catga::builder()
        .event_handler(rec("one", false))
        .event_handler(rec("two", true))
        .event_handler(rec("three", false))
        .build()
        .unwrap();
    let err = m.publish(Happened { n: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Some("test.boom"));
    assert!(err.message().contains("two failed"), "{err}");
    let mut got = seen.lock().await.clone();
    got.sort_unstable();
    assert_eq!(got, vec!["one", "three", "two"]);
}

#[tokio::test]
async fn publish_with_several_failures_lists_them_all() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = |name, fail| Recorder {
        name,
        fail,
        seen: seen.clone(),
    };
    let m = Catga::builder()
        .event_handler(rec("a", true))
        .event_handler(rec("b", false))
        .event_handler(rec("c", true))
        .build()
        .unwrap();
    let err = m.publish(Happened { n: 2 }).await.unwrap_err();
    assert_eq!(err.related().len(), 2);
    assert!(err.related()[0].message().contains("a failed"));
    assert!(err.related()[1].message().contains("c failed"));
    assert!(err.to_string().contains("2 handlers"), "{err}");
}

/// Waits `yields` polls, then fails, panics or succeeds. `BIG` holds a
/// large buffer across the waits, so its future is too big to keep in place
/// (it is boxed); the others are small and kept in place.
struct Staggered<const BIG: bool> {
    yields: usize,
    outcome: &'static str,
    ran: Arc<AtomicUsize>,
}
impl<const BIG: bool> EventHandler<Happened> for Staggered<BIG> {
    async fn handle(&self, _: &Happened, _: &Context) -> Result<()> {
        if BIG {
            let buffer = [self.yields as u8; 4096];
            for _ in 0..self.yields {
                tokio::task::yield_now().await;
            }
            std::hint::black_box(&buffer);
        } else {
            for _ in 0..self.yields {
                tokio::task::yield_now().await;
            }
        }
        self.ran.fetch_add(1, Ordering::SeqCst);
        match self.outcome {
            "panic" => panic!("staggered handler panics"),
            "fail" => Err(Error::handler(
                "test.boom",
                format!("{} failed", self.yields),
            )),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn publish_reports_failures_in_registration_order_whichever_finishes_first() {
    let ran = Arc::new(AtomicUsize::new(0));
    let small = |yields, outcome| Staggered::<false> {
        yields,
        outcome,
        ran: ran.clone(),
    };
    let big = |yields, outcome| Staggered::<true> {
        yields,
        outcome,
        ran: ran.clone(),
    };
    // The first waits longest and the last finishes at once: finishing order
    // is the reverse of registration order. Small and large futures mix.
    let m = Catga::builder()
        .event_handler(small(5, "fail"))
        .event_handler(big(3, "ok"))
        .event_handler(small(2, "panic"))
        .event_handler(big(1, "fail"))
        .event_handler(small(0, "fail"))
        .build()
        .unwrap();
    let err = m.publish(Happened { n: 4 }).await.unwrap_err();
    assert_eq!(ran.load(Ordering::SeqCst), 5, "every handler ran once");
    let related: Vec<String> = err
        .related()
        .iter()
        .map(|e| e.message().to_owned())
        .collect();
    assert_eq!(related.len(), 4, "{related:?}");
    assert!(related[0].contains("5 failed"), "{related:?}");
    assert!(related[1].contains("panicked"), "{related:?}");
    assert!(related[2].contains("1 failed"), "{related:?}");
    assert!(related[3].contains("0 failed"), "{related:?}");
}

#[tokio::test]
async fn publish_without_handlers_is_fine() {
    let m = Catga::builder().build().unwrap();
    m.publish(Happened { n: 3 }).await.unwrap();
}

#[tokio::test]
async fn context_propagates_correlation_and_sets_causation() {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Outer;
    impl catga_core::Message for Outer {
        const NAME: &'static str = "test.Outer";
    }
    impl Request for Outer {
        type Response = (Uuid, Uuid, Option<Uuid>, Option<String>);
    }
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Inner;
    impl catga_core::Message for Inner {
        const NAME: &'static str = "test.Inner";
    }
    impl Request for Inner {
        type Response = (Uuid, Uuid, Option<Uuid>, Option<String>);
    }
    let facts = |ctx: &Context| {
        (
            ctx.message_id(),
            ctx.correlation_id(),
            ctx.causation_id(),
            ctx.headers().get("tenant").map(str::to_owned),
        )
    };
    let m = Catga::builder()
        .request_fn(move |_: Outer, ctx: Context| async move { ctx.send(Inner).await })
        .request_fn(move |_: Inner, ctx: Context| async move { Ok(facts(&ctx)) })
        .build()
        .unwrap();
    let outer_id = catga_core::new_id();
    let (inner_id, corr, cause, tenant) = m
        .send_with(
            Outer,
            Metadata::new()
                .with_message_id(outer_id)
                .with_header("tenant", "acme"),
        )
        .await
        .unwrap();
    assert_ne!(inner_id, outer_id);
    assert_eq!(corr, outer_id, "the outer message started the conversation");
    assert_eq!(cause, Some(outer_id));
    assert_eq!(tenant.as_deref(), Some("acme"));
}

#[tokio::test]
async fn handlers_run_concurrently_through_a_cloned_mediator() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let m = Catga::builder()
        .request_fn(move |a: Add, _| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(a.a)
            }
        })
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let m = m.clone();
        tasks.push(tokio::spawn(
            async move { m.send(Add { a: i, b: 0 }).await },
        ));
    }
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap().unwrap();
    }
    assert_eq!(sum, (0..50).sum::<i64>());
    assert_eq!(count.load(Ordering::SeqCst), 50);
}

#[test]
fn invalid_wire_names_fail_the_build() {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Spaced;
    impl catga_core::Message for Spaced {
        const NAME: &'static str = "orders.Create Order";
    }
    impl Request for Spaced {
        type Response = ();
    }
    let err = Catga::builder()
        .request_fn(|_: Spaced, _| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("orders.Create Order"), "{err}");
}
