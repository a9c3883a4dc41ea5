use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::behavior::concurrency::ConcurrencyLimit;
use catga_core::behavior::idempotency::Idempotency;
use catga_core::behavior::retry::Retry;
use catga_core::behavior::timeout::Timeout;
use catga_core::behavior::tracing::Tracing;
use catga_core::behavior::{Behavior, Envelope, Next, Reply, Stack};
use catga_core::relay::RelayOptions;
use catga_core::store::{MemoryIdempotencyStore, MemoryOutboxStore};
use catga_core::{Catga, Error, ErrorKind, Metadata, Result};

use crate::messages::*;

type Log = Arc<Mutex<Vec<String>>>;

struct Mark {
    name: &'static str,
    log: Log,
}
impl Behavior for Mark {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        self.log.lock().unwrap().push(format!("{} in", self.name));
        let r = next.run(env).await;
        self.log.lock().unwrap().push(format!("{} out", self.name));
        r
    }
}

#[tokio::test]
async fn behaviors_nest_in_the_order_added_and_scoped_ones_apply_to_their_type_only() {
    let log: Log = Arc::default();
    let mark = |name| Mark {
        name,
        log: log.clone(),
    };
    let handler_log = log.clone();
    let m = Catga::builder()
        .behavior(mark("outer"))
        .behavior_for::<Add, _>(mark("add-only"))
        .behavior(mark("inner"))
        .behavior_for::<Sleep, _>(mark("sleep-only"))
        .request_fn(move |a: Add, _| {
            let log = handler_log.clone();
            async move {
                log.lock().unwrap().push("handler".into());
                Ok(a.a + a.b)
            }
        })
        .request_fn(|_: Sleep, _| async { Ok(()) })
        .build()
        .unwrap();
    assert_eq!(m.send(Add { a: 1, b: 1 }).await.unwrap(), 2);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer in",
            "add-only in",
            "inner in",
            "handler",
            "inner out",
            "add-only out",
            "outer out"
        ]
    );
    log.lock().unwrap().clear();
    m.send(Sleep { millis: 0 }).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer in",
            "inner in",
            "sleep-only in",
            "sleep-only out",
            "inner out",
            "outer out"
        ]
    );
}

#[tokio::test]
async fn behaviors_wrap_each_event_handler() {
    let log: Log = Arc::default();
    let m = Catga::builder()
        .behavior(Mark {
            name: "b",
            log: log.clone(),
        })
        .event_fn(|_: Happened, _| async { Ok(()) })
        .event_fn(|_: Happened, _| async { Ok(()) })
        .build()
        .unwrap();
    m.publish(Happened { n: 1 }).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 4, "{:?}", log.lock().unwrap());
}

#[tokio::test]
async fn validation_failures_never_reach_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let m = Catga::builder()
        .validate::<Register>()
        .request_fn(move |_: Register, _| {
            let c = c.clone();
            async move { Ok(c.fetch_add(1, Ordering::SeqCst) as u32) }
        })
        .build()
        .unwrap();
    let err = m
        .send(Register {
            email: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("no @"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    m.send(Register {
        email: "a@b.c".into(),
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn failing_mediator(
    attempts: u32,
    calls: Arc<AtomicUsize>,
    succeed_on: usize,
) -> catga_core::Mediator {
    Catga::builder()
        .behavior(
            Retry::new(attempts).backoff(Duration::from_millis(10), Duration::from_millis(200)),
        )
        .request_fn(move |f: Fail, _| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= succeed_on {
                    Ok(())
                } else {
                    Err(Error::handler(f.code, format!("attempt {n}")).with_retryable(f.retryable))
                }
            }
        })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_retries_retryable_errors_until_success() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = failing_mediator(5, calls.clone(), 3);
    m.send(Fail {
        code: "flaky".into(),
        retryable: true,
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_the_bound() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = failing_mediator(4, calls.clone(), usize::MAX);
    let err = m
        .send(Fail {
            code: "flaky".into(),
            retryable: true,
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(err.message().contains("attempt 4"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn retry_does_not_retry_non_retryable_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = failing_mediator(5, calls.clone(), usize::MAX);
    m.send(Fail {
        code: "fatal".into(),
        retryable: false,
    })
    .await
    .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// When a dependency fails for everyone, the peer's retry budget lets retries
/// add a bounded share of load: with 5 attempts allowed per send, 100 failing
/// sends make 100 first attempts and about 10 % retries (plus the budget's
/// per-second minimum), not 500 calls.
#[tokio::test(start_paused = true)]
async fn the_retry_budget_bounds_retries_across_sends() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let m = Catga::builder()
        .retry_budget(catga_core::RetryBudget::new(0.1, 1))
        .behavior(Retry::new(5).backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .request_fn(move |f: Fail, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(Error::handler(f.code, "down").with_retryable(true)) }
        })
        .build()
        .unwrap();
    for _ in 0..100 {
        let e = m
            .send(Fail {
                code: "down".into(),
                retryable: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("down"));
    }
    let calls = calls.load(Ordering::SeqCst);
    // 100 firsts, 10 % of them as retries, and the reserve of 1 per second
    // over the budget's 10 s window.
    assert!((100..=100 + 10 + 10).contains(&calls), "{calls} calls");
    assert!(m.retry_budget().denied() > 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_behavior_fires_and_retry_sees_timeouts_as_retryable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let m = Catga::builder()
        .behavior(Tracing::new())
        .behavior(Retry::new(3))
        .behavior(Timeout::new(Duration::from_millis(100)))
        .request_fn(move |s: Sleep, _| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(s.millis)).await;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let err = m.send(Sleep { millis: 60_000 }).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    m.send(Sleep { millis: 5 }).await.unwrap();
}

#[tokio::test]
async fn concurrency_limit_rejects_when_full() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (g, e) = (gate.clone(), entered.clone());
    let m = Catga::builder()
        .behavior(ConcurrencyLimit::new(1).reject_when_full())
        .request_fn(move |_: Sleep, _| {
            let (g, e) = (g.clone(), e.clone());
            async move {
                e.notify_one();
                g.notified().await;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let first = tokio::spawn({
        let m = m.clone();
        async move { m.send(Sleep { millis: 0 }).await }
    });
    entered.notified().await;
    let err = m.send(Sleep { millis: 0 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    assert!(err.is_retryable());
    gate.notify_one();
    first.await.unwrap().unwrap();
}

#[tokio::test]
async fn idempotency_runs_concurrent_duplicates_once_with_identical_responses() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()))
        .request_fn(move |a: Add, _| {
            let c = c.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(a.a + c.fetch_add(1, Ordering::SeqCst) as i64)
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.send_with(Add { a: 100, b: 0 }, Metadata::new().with_message_id(id))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 100);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A completed duplicate is served from the store; a new id runs again.
    let again = m
        .send_with(Add { a: 100, b: 0 }, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(again, 100);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(m.send(Add { a: 100, b: 0 }).await.unwrap(), 101);
}

#[tokio::test]
async fn idempotency_lets_a_failed_attempt_run_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()))
        .request_fn({
            let calls = calls.clone();
            move |f: Fail, _| {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(Error::handler(f.code, "first attempt fails"))
                    } else {
                        Ok(())
                    }
                }
            }
        })
        .build()
        .unwrap();
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    let msg = Fail {
        code: "x".into(),
        retryable: true,
    };
    m.send_with(msg.clone(), meta.clone()).await.unwrap_err();
    m.send_with(msg.clone(), meta.clone()).await.unwrap();
    m.send_with(msg, meta).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idempotent_handlers_publish_through_the_outbox_only_on_success() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let m = Catga::builder()
        .behavior(Idempotency::new(store.clone()))
        .outbox_with(
            store.outbox(),
            catga_core::relay::RelayOptions {
                poll_interval: Duration::from_millis(5),
                ..Default::default()
            },
        )
        .request_fn(|a: Add, ctx: catga_core::Context| async move {
            ctx.publish(Happened { n: a.a as u32 }).await?;
            if a.b < 0 {
                return Err(Error::handler("test.negative", "b < 0"));
            }
            Ok(a.a + a.b)
        })
        .event_fn(move |e: Happened, _| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(e.n);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let id = catga_core::new_id();
    m.send_with(Add { a: 7, b: 1 }, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    m.send_with(Add { a: 7, b: 1 }, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    m.send(Add { a: 9, b: -1 }).await.unwrap_err();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    m.shutdown().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![7],
        "once for the duplicate, never for the failure"
    );
}

#[tokio::test]
async fn idempotency_can_keep_non_retryable_failures_for_duplicates() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()).store_failures(true))
        .request_fn(move |f: Fail, _| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::handler(f.code, "rejected").with_retryable(f.retryable))
            }
        })
        .build()
        .unwrap();
    let fatal = Metadata::new().with_message_id(catga_core::new_id());
    let msg = |retryable| Fail {
        code: "orders.rejected".into(),
        retryable,
    };
    let first = m.send_with(msg(false), fatal.clone()).await.unwrap_err();
    let again = m.send_with(msg(false), fatal).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the stored failure was replayed"
    );
    assert_eq!(again.kind(), first.kind());
    assert_eq!(again.code(), Some("orders.rejected"));
    assert_eq!(again.message(), "rejected");
    let flaky = Metadata::new().with_message_id(catga_core::new_id());
    m.send_with(msg(true), flaky.clone()).await.unwrap_err();
    m.send_with(msg(true), flaky).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "retryable failures are never stored"
    );
}

/// Adds, logging each run; fails the first `failing` runs (retryable).
struct Adding {
    log: Log,
    calls: Arc<AtomicUsize>,
    failing: usize,
    sleep: Duration,
}
impl catga_core::RequestHandler<Add> for Adding {
    async fn handle(&self, a: &Add, _: &catga_core::Context) -> Result<i64> {
        tokio::time::sleep(self.sleep).await;
        self.log.lock().unwrap().push("handler".into());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failing {
            return Err(Error::handler("test.flaky", format!("run {n}")).with_retryable(true));
        }
        Ok(a.a + a.b)
    }
}

fn adding(log: &Log, failing: usize, sleep: Duration) -> (Adding, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = Adding {
        log: log.clone(),
        calls: calls.clone(),
        failing,
        sleep,
    };
    (handler, calls)
}

#[tokio::test]
async fn a_stack_nests_in_the_order_added_inside_the_builders_behaviors() {
    let log: Log = Arc::default();
    let mark = |name| Mark {
        name,
        log: log.clone(),
    };
    let (handler, _) = adding(&log, 0, Duration::ZERO);
    let m = Catga::builder()
        .behavior(mark("builder"))
        .request_handler(
            Stack::new()
                .with(mark("outer"))
                .with(mark("inner"))
                .around(handler),
        )
        .build()
        .unwrap();
    assert_eq!(m.send(Add { a: 1, b: 2 }).await.unwrap(), 3);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "builder in",
            "outer in",
            "inner in",
            "handler",
            "inner out",
            "outer out",
            "builder out"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_a_stack_runs_what_is_inside_it_again() {
    let log: Log = Arc::default();
    let (handler, calls) = adding(&log, 2, Duration::ZERO);
    let stack = Stack::new()
        .with(Retry::new(5).backoff(Duration::from_millis(10), Duration::from_millis(100)))
        .with(Mark {
            name: "inner",
            log: log.clone(),
        });
    let m = Catga::builder()
        .request_handler(stack.around(handler))
        .build()
        .unwrap();
    assert_eq!(m.send(Add { a: 2, b: 2 }).await.unwrap(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let inner_runs = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| *l == "inner in")
        .count();
    assert_eq!(inner_runs, 3, "{:?}", log.lock().unwrap());
}

/// Idempotency in a stack makes its route run to completion, as on the
/// builder: a caller that stops waiting does not cut the handler off, and
/// a duplicate gets the stored outcome.
#[tokio::test(start_paused = true)]
async fn idempotency_in_a_stack_runs_to_completion_and_answers_duplicates_once() {
    let (m, calls) = idempotent_stack();
    let id = catga_core::new_id();
    let err = m
        .send_with(
            Add { a: 5, b: 5 },
            Metadata::new()
                .with_message_id(id)
                .with_timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler ran to its end after its caller stopped waiting"
    );
    let again = m
        .send_with(Add { a: 5, b: 5 }, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(again, 10);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the duplicate was answered from the store"
    );
}

#[test]
fn a_stack_idempotency_inside_a_builder_one_is_refused() {
    let log: Log = Arc::default();
    let (handler, _) = adding(&log, 0, Duration::ZERO);
    let err = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()))
        .request_handler(
            Stack::new()
                .with(Idempotency::new(MemoryIdempotencyStore::new()))
                .around(handler),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("2 idempotency behaviors"), "{err}");
}

/// The relay must read the outbox the idempotency store holds events in:
/// another outbox would leave them there, never published.
#[tokio::test]
async fn an_outbox_other_than_the_idempotency_stores_own_is_refused() {
    let err = Catga::builder()
        .idempotency(MemoryIdempotencyStore::new())
        .outbox(MemoryOutboxStore::new())
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("never be relayed"), "{err}");

    let store = Arc::new(MemoryIdempotencyStore::new());
    let other = Arc::new(MemoryIdempotencyStore::new());
    let err = Catga::builder()
        .idempotency(store.clone())
        .outbox_without_relay(other.outbox())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("never be relayed"), "{err}");

    // Its own outbox, however it is named, is fine.
    Catga::builder()
        .idempotency(store.clone())
        .outbox_with(store.clone(), RelayOptions::default())
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    Catga::builder()
        .idempotency(store.clone())
        .outbox_without_relay(store.outbox())
        .build()
        .unwrap();
}

/// The same with no deadline: a caller that drops its `send` (a client gone,
/// a `select!`) does not cut a stacked idempotent handler off either.
#[tokio::test(start_paused = true)]
async fn idempotency_in_a_stack_survives_a_caller_that_drops_its_send() {
    let (m, calls) = idempotent_stack();
    let id = catga_core::new_id();
    let meta = || Metadata::new().with_message_id(id);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        m.send_with(Add { a: 1, b: 1 }, meta()),
    )
    .await;
    assert!(gave_up.is_err(), "the caller stopped waiting first");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler ran to its end"
    );
    assert_eq!(m.send_with(Add { a: 1, b: 1 }, meta()).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Records the handler name its envelope gives.
struct SeesHandler(Log);
impl Behavior for SeesHandler {
    async fn handle<'a>(&'a self, env: Envelope<'a>, next: impl Next<'a>) -> Result<Reply> {
        self.0.lock().unwrap().push(env.handler_name().to_owned());
        next.run(env).await
    }
}

#[tokio::test]
async fn behaviors_inside_and_outside_a_stack_see_the_same_handler() {
    let seen: Log = Arc::default();
    let (handler, _) = adding(&seen.clone(), 0, Duration::ZERO);
    let m = Catga::builder()
        .behavior(SeesHandler(seen.clone()))
        .request_handler(Stack::new().with(SeesHandler(seen.clone())).around(handler))
        .build()
        .unwrap();
    m.send(Add { a: 1, b: 1 }).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].ends_with("Adding"), "{seen:?}");
    assert_eq!(seen[0], seen[1], "outside and inside the stack");
}

/// A mediator whose `Add` handler (200 ms) is stacked with idempotency; the
/// handler's run count.
fn idempotent_stack() -> (catga_core::Mediator, Arc<AtomicUsize>) {
    let log: Log = Arc::default();
    let (handler, calls) = adding(&log, 0, Duration::from_millis(200));
    let stack = Stack::new().with(Idempotency::new(MemoryIdempotencyStore::new()));
    let m = Catga::builder()
        .request_handler(stack.around(handler))
        .build()
        .unwrap();
    (m, calls)
}
