//! The effectively-once guarantees in one process, each case of the issue that
//! broke them: the effect of a message id happens once whatever the caller's
//! deadline does, a lost claim is an error, saga steps with unknown outcomes are
//! asked again and compensated, handlers have stable ids, and one publish has
//! one message id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::behavior::idempotency::Idempotency;
use catga_core::saga::{Saga, SagaStatus, Step};
use catga_core::store::{MemoryIdempotencyStore, UnitOfWork};
use catga_core::transport::memory::MemoryBus;
use catga_core::{Catga, Context, ErrorKind, Mediator, Message, Metadata, Request, Uuid};
use serde::{Deserialize, Serialize};

use crate::messages::*;
use crate::saga::finished;

/// Case 1: an idempotent handler cut off by its caller's deadline after it
/// applied its effect runs to its end; the retry gets its stored outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_the_wait_not_the_effect_and_the_retry_gets_the_outcome() {
    let applied = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (a, f) = (applied.clone(), finished.clone());
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()).wait(Duration::from_secs(10)))
        .request_fn(move |s: Sleep, _| {
            let (a, f) = (a.clone(), f.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst); // the effect
                tokio::time::sleep(Duration::from_millis(s.millis)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let slow = Sleep { millis: 400 };
    let first = m
        .send_with(
            slow.clone(),
            Metadata::new()
                .with_message_id(id)
                .with_timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Timeout);
    // The handler was not dropped with the caller: it finishes by itself.
    catga_test_support::eventually("the handler to finish", Duration::from_secs(20), || {
        finished.load(Ordering::SeqCst) == 1
    })
    .await;
    m.send_with(slow, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(
        applied.load(Ordering::SeqCst),
        1,
        "the effect happened once"
    );
}

/// Case 1, retried while the first attempt still runs: the duplicate waits for
/// the outcome instead of running the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_during_a_cut_off_attempt_waits_for_its_outcome() {
    let applied = Arc::new(AtomicUsize::new(0));
    let a = applied.clone();
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()).wait(Duration::from_secs(20)))
        .request_fn(move |s: Sleep, _| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(s.millis)).await;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let slow = Sleep { millis: 300 };
    let cut = Metadata::new()
        .with_message_id(id)
        .with_timeout(Duration::from_millis(30));
    assert_eq!(
        m.send_with(slow.clone(), cut).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    m.send_with(slow, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    assert_eq!(applied.load(Ordering::SeqCst), 1);
}

/// Case 2: an attempt whose lease ran out while its peer could not renew (a
/// blocked thread stands in for a paused process) and was taken over gets an
/// error, never a silent `Ok`; its held events are not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_lost_its_claim_is_an_error_the_caller_sees() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let m = Catga::builder()
        .behavior(
            Idempotency::new(store.clone())
                .lease(Duration::from_millis(60))
                .wait(Duration::from_secs(10)),
        )
        .outbox_without_relay(store.outbox())
        .request_fn(move |s: Sleep, ctx: Context| {
            let r = r.clone();
            async move {
                ctx.publish(Happened {
                    n: r.fetch_add(1, Ordering::SeqCst) as u32,
                })
                .await?;
                // Blocks the worker: no renewal can run, as in a paused peer.
                std::thread::sleep(Duration::from_millis(s.millis));
                Ok(())
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let paused = {
        let m = m.clone();
        tokio::spawn(async move {
            m.send_with(Sleep { millis: 400 }, Metadata::new().with_message_id(id))
                .await
        })
    };
    catga_test_support::eventually("the first attempt", Duration::from_secs(20), || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await; // past the 60 ms lease
    m.send_with(Sleep { millis: 0 }, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    let first = paused.await.unwrap().unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Conflict, "{first}");
    assert_eq!(first.code(), Some("catga.claim_lost"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Only the attempt that kept its claim wrote its event.
    use catga_core::store::OutboxStore;
    assert_eq!(store.outbox().backlog().await.unwrap(), 1);
}

/// Case 7: two closures handling one event have distinct, stable ids, so
/// idempotency runs each of them (the second is not skipped as a duplicate).
#[tokio::test]
async fn two_closure_handlers_of_one_event_are_idempotent_each_on_its_own() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let m = Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()))
        .event_fn(move |_: Happened, _| {
            let s = s1.clone();
            async move {
                s.lock().unwrap().push("first");
                Ok(())
            }
        })
        .event_fn(move |_: Happened, _| {
            let s = s2.clone();
            async move {
                s.lock().unwrap().push("second");
                Ok(())
            }
        })
        .event_fn_named("audit", move |_: Happened, _| {
            let s = s3.clone();
            async move {
                s.lock().unwrap().push("audit");
                Ok(())
            }
        })
        .build()
        .unwrap();
    let meta = Metadata::new().with_message_id(catga_core::new_id());
    m.publish_with(Happened { n: 1 }, meta.clone())
        .await
        .unwrap();
    m.publish_with(Happened { n: 1 }, meta).await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, ["audit", "first", "second"], "each once");
}

#[test]
fn two_event_handlers_with_one_name_fail_the_build() {
    let err = Catga::builder()
        .event_fn_named("audit", |_: Happened, _| async { Ok(()) })
        .event_fn_named("audit", |_: Happened, _| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateHandler);
    assert!(err.to_string().contains("audit"), "{err}");
}

/// Case 8: every local handler of one publish sees the same message id.
#[tokio::test]
async fn every_handler_of_one_publish_sees_the_same_ids() {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let (i1, i2) = (ids.clone(), ids.clone());
    let m = Catga::builder()
        .event_fn(move |_: Happened, ctx: Context| {
            let i = i1.clone();
            async move {
                i.lock()
                    .unwrap()
                    .push((ctx.message_id(), ctx.correlation_id()));
                Ok(())
            }
        })
        .event_fn(move |_: Happened, ctx: Context| {
            let i = i2.clone();
            async move {
                i.lock()
                    .unwrap()
                    .push((ctx.message_id(), ctx.correlation_id()));
                Ok(())
            }
        })
        .build()
        .unwrap();
    m.publish(Happened { n: 1 }).await.unwrap();
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "one publish, one message id");
}

// ---- sagas ----------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    /// Milliseconds the handler takes after applying the charge.
    then_ms: u64,
}
impl Message for Charge {
    const NAME: &'static str = "once.Charge";
}
impl Request for Charge {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund;
impl Message for Refund {
    const NAME: &'static str = "once.Refund";
}
impl Request for Refund {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reserve;
impl Message for Reserve {
    const NAME: &'static str = "once.Reserve";
}
impl Request for Reserve {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Release;
impl Message for Release {
    const NAME: &'static str = "once.Release";
}
impl Request for Release {
    type Response = ();
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pay {
    slow_ms: u64,
}

/// Per saga (correlation id): what each handler applied, in order.
type Journal = Arc<Mutex<HashMap<Uuid, Vec<&'static str>>>>;

fn note(j: &Journal, ctx: &Context, what: &'static str) {
    j.lock()
        .unwrap()
        .entry(ctx.correlation_id())
        .or_default()
        .push(what);
}

fn payment(step_deadline: Duration) -> Saga<Pay> {
    Saga::new("once.payment")
        .step(
            Step::send("reserve", |_: &Pay| Reserve)
                .compensate(|_: &Pay| Release)
                .timeout(Duration::from_millis(100))
                .retries(2)
                .deadline(step_deadline.max(Duration::from_secs(5))),
        )
        .step(
            Step::send("charge", |p: &Pay| Charge { then_ms: p.slow_ms })
                .compensate(|_: &Pay| Refund)
                .timeout(Duration::from_millis(100))
                .retries(2)
                .deadline(step_deadline),
        )
        .compensation_retries(5, Duration::from_millis(20))
        .polling(Duration::from_millis(20), Duration::from_secs(5))
}

/// The two-step reserve/charge saga with idempotent handlers.
async fn shop(journal: &Journal, step_deadline: Duration) -> catga_core::Peer {
    let (j1, j2, j3, j4) = (
        journal.clone(),
        journal.clone(),
        journal.clone(),
        journal.clone(),
    );
    Catga::builder()
        .behavior(Idempotency::new(MemoryIdempotencyStore::new()).wait(Duration::from_secs(30)))
        .saga(payment(step_deadline))
        .request_fn(move |_: Reserve, ctx: Context| {
            let j = j1.clone();
            async move {
                note(&j, &ctx, "reserve");
                Ok(())
            }
        })
        .request_fn(move |c: Charge, ctx: Context| {
            let j = j2.clone();
            async move {
                note(&j, &ctx, "charge");
                tokio::time::sleep(Duration::from_millis(c.then_ms)).await;
                Ok(())
            }
        })
        .request_fn(move |_: Refund, ctx: Context| {
            let j = j3.clone();
            async move {
                note(&j, &ctx, "refund");
                Ok(())
            }
        })
        .request_fn(move |_: Release, ctx: Context| {
            let j = j4.clone();
            async move {
                note(&j, &ctx, "release");
                Ok(())
            }
        })
        .start()
        .await
        .unwrap()
}

/// Case 3: a charge that answers after the step timeout is asked again with the
/// same id and its one outcome comes back: charged once, saga completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_answering_late_is_asked_again_and_applies_once() {
    let journal = Journal::default();
    let m = shop(&journal, Duration::from_secs(30)).await;
    let id = payment(Duration::ZERO)
        .handle(&m)
        .unwrap()
        .start(Pay { slow_ms: 450 })
        .await
        .unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Completed, "{state:?}");
    assert_eq!(journal.lock().unwrap()[&id], ["reserve", "charge"]);
    m.shutdown().await.unwrap();
}

/// Case 3: a step given up on while its outcome is unknown is compensated too
/// (refund), after the earlier steps' effects; the charge applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_given_up_on_is_compensated_with_the_others() {
    let journal = Journal::default();
    let m = shop(&journal, Duration::from_millis(400)).await;
    let id = payment(Duration::ZERO)
        .handle(&m)
        .unwrap()
        .start(Pay { slow_ms: 60_000 })
        .await
        .unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Compensated, "{state:?}");
    assert_eq!(state.failed_step.as_deref(), Some("charge"));
    assert_eq!(
        journal.lock().unwrap()[&id],
        ["reserve", "charge", "refund", "release"],
        "charged once, refunded, released"
    );
    m.shutdown().await.unwrap();
}

/// Case 6: "no responders" for a moment (the handling service restarts) is
/// asked again, not compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_without_responders_does_not_compensate_a_saga() {
    let bus = MemoryBus::new();
    let journal = Journal::default();
    let coordinator = Catga::builder()
        .service("orders")
        .transport(bus.transport())
        .saga(payment(Duration::from_secs(30)))
        .single_copy()
        .start()
        .await
        .unwrap();
    let id = payment(Duration::ZERO)
        .handle(&coordinator)
        .unwrap()
        .start(Pay::default())
        .await
        .unwrap();
    // No peer handles the commands yet: the first attempts find no responders.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = coordinator.saga_state(id).await.unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Running, "{state:?}");
    let j = journal.clone();
    let (j1, j2) = (j.clone(), j.clone());
    let services = Catga::builder()
        .service("payments")
        .transport(bus.transport())
        .request_fn(move |_: Reserve, ctx: Context| {
            let j = j1.clone();
            async move {
                note(&j, &ctx, "reserve");
                Ok(())
            }
        })
        .request_fn(move |_: Charge, ctx: Context| {
            let j = j2.clone();
            async move {
                note(&j, &ctx, "charge");
                Ok(())
            }
        })
        .request_fn(|_: Refund, _| async { Ok(()) })
        .request_fn(|_: Release, _| async { Ok(()) })
        .start()
        .await
        .unwrap();
    let state = finished(&coordinator, id).await;
    assert_eq!(state.status, SagaStatus::Completed, "{state:?}");
    assert_eq!(journal.lock().unwrap()[&id], ["reserve", "charge"]);
    coordinator.shutdown().await.unwrap();
    services.shutdown().await.unwrap();
}

// ---- unit of work ----------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposit {
    account: String,
    cents: i64,
    /// Fail (retryably) after staging, on the first attempt only.
    flaky: bool,
}
impl Message for Deposit {
    const NAME: &'static str = "once.Deposit";
    fn partition(&self) -> Option<String> {
        Some(self.account.clone())
    }
}
impl Request for Deposit {
    type Response = i64;
}

/// A deposit handler that keeps balances in the idempotency store's own state
/// through a unit of work: read, stage the new balance with the value read as
/// its condition, publish `Happened`.
fn bank(store: &Arc<MemoryIdempotencyStore>, attempts: &Arc<AtomicUsize>) -> Mediator {
    let (s, a) = (store.clone(), attempts.clone());
    Catga::builder()
        .behavior(catga_core::behavior::retry::Retry::new(5))
        .behavior(Idempotency::new(store.clone()).wait(Duration::from_secs(10)))
        .outbox_without_relay(store.outbox())
        .request_fn(move |d: Deposit, ctx: Context| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                let attempt = a.fetch_add(1, Ordering::SeqCst);
                let key = format!("balance:{}", d.account);
                let read = s.get(&key);
                let balance = read
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|b| b.parse::<i64>().ok())
                    .unwrap_or(0);
                // Let concurrent deposits read the same balance.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let new = balance + d.cents;
                ctx.stage(
                    UnitOfWork::new()
                        .expect(key.clone(), read)
                        .set(key, new.to_string())
                        .append("ledger", format!("{} {}", d.account, d.cents)),
                )?;
                ctx.publish(Happened { n: d.cents as u32 }).await?;
                if d.flaky && attempt == 0 {
                    return Err(catga_core::Error::store("the first attempt fails"));
                }
                Ok(new)
            }
        })
        .build()
        .unwrap()
}

/// A failed attempt's staged writes and events are not applied; the retry's
/// are, once; a duplicate gets the stored response and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_commits_with_its_completion_or_not_at_all() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let attempts = Arc::new(AtomicUsize::new(0));
    let m = bank(&store, &attempts);
    let id = catga_core::new_id();
    let deposit = Deposit {
        account: "ann".into(),
        cents: 50,
        flaky: true,
    };
    let meta = Metadata::new().with_message_id(id);
    assert_eq!(
        m.send_with(deposit.clone(), meta.clone()).await.unwrap(),
        50
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "failed once, then ran");
    assert_eq!(m.send_with(deposit, meta).await.unwrap(), 50);
    assert_eq!(store.get("balance:ann").as_deref(), Some(&b"50"[..]));
    assert_eq!(store.list("ledger").len(), 1, "one ledger line");
    use catga_core::store::OutboxStore;
    assert_eq!(store.outbox().backlog().await.unwrap(), 1, "one event");
}

/// Concurrent deposits read the same balance; the one whose condition no longer
/// holds writes nothing and is retried: no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_condition_writes_nothing_and_the_retry_reads_again() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let attempts = Arc::new(AtomicUsize::new(0));
    let m = bank(&store, &attempts);
    let mut tasks = Vec::new();
    for cents in [10, 20, 30] {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.send(Deposit {
                account: "bob".into(),
                cents,
                flaky: false,
            })
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.get("balance:bob").as_deref(), Some(&b"60"[..]));
    assert_eq!(store.list("ledger").len(), 3);
    assert!(
        attempts.load(Ordering::SeqCst) > 3,
        "some attempt was retried"
    );
}

/// Case 2 with a unit of work: the attempt whose claim was taken over applies
/// none of its writes, so the effect happens once although the handler ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_attempt_applies_none_of_its_writes() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (s, r) = (store.clone(), runs.clone());
    let m = Catga::builder()
        .behavior(
            Idempotency::new(store.clone())
                .lease(Duration::from_millis(60))
                .wait(Duration::from_secs(10)),
        )
        .request_fn(move |d: Deposit, ctx: Context| {
            let (_s, r) = (s.clone(), r.clone());
            async move {
                let first = r.fetch_add(1, Ordering::SeqCst) == 0;
                ctx.stage(UnitOfWork::new().increment(format!("balance:{}", d.account), d.cents))?;
                if first {
                    // A paused peer: no renewal runs while the thread is blocked.
                    std::thread::sleep(Duration::from_millis(400));
                }
                Ok(0)
            }
        })
        .build()
        .unwrap();
    let id = catga_core::new_id();
    let deposit = Deposit {
        account: "cy".into(),
        cents: 5,
        flaky: false,
    };
    let paused = {
        let (m, d) = (m.clone(), deposit.clone());
        tokio::spawn(async move { m.send_with(d, Metadata::new().with_message_id(id)).await })
    };
    catga_test_support::eventually("the first attempt", Duration::from_secs(20), || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    m.send_with(deposit, Metadata::new().with_message_id(id))
        .await
        .unwrap();
    let lost = paused.await.unwrap().unwrap_err();
    assert_eq!(lost.code(), Some("catga.claim_lost"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        store.get("balance:cy").as_deref(),
        Some(&b"5"[..]),
        "applied once"
    );
}

#[tokio::test]
async fn staging_without_idempotency_is_an_error() {
    let m = Catga::builder()
        .request_fn(|_: Deposit, ctx: Context| async move {
            ctx.stage(UnitOfWork::new().set("k", "v"))?;
            Ok(0)
        })
        .build()
        .unwrap();
    let e = m
        .send(Deposit {
            account: "x".into(),
            cents: 1,
            flaky: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

/// Case 7: handler ids are the message name (requests) and the message name
/// with the registered name or position (events), never a Rust type name, so
/// every copy of a service computes the same idempotency keys whatever
/// compiler built it.
#[tokio::test]
async fn handler_ids_are_stable_names_not_type_names() {
    use catga_core::behavior::{Behavior, Envelope, Next, Reply};
    struct Ids(Arc<Mutex<Vec<String>>>);
    impl Behavior for Ids {
        async fn handle<'a>(
            &'a self,
            env: Envelope<'a>,
            next: impl Next<'a>,
        ) -> catga_core::Result<Reply> {
            self.0.lock().unwrap().push(env.handler_id().to_owned());
            next.run(env).await
        }
    }
    let ids = Arc::new(Mutex::new(Vec::new()));
    let m = Catga::builder()
        .behavior(Ids(ids.clone()))
        .request_fn(|a: Add, _| async move { Ok(a.a) })
        .event_fn(|_: Happened, _| async { Ok(()) })
        .event_fn_named("audit", |_: Happened, _| async { Ok(()) })
        .event_fn(|_: Happened, _| async { Ok(()) })
        .build()
        .unwrap();
    m.send(Add { a: 1, b: 0 }).await.unwrap();
    m.publish(Happened { n: 1 }).await.unwrap();
    let mut ids = ids.lock().unwrap().clone();
    ids.sort();
    assert_eq!(
        ids,
        [
            "test.Add",
            "test.Happened#0",
            "test.Happened#1",
            "test.Happened#audit"
        ]
    );
}

/// An event published by a handler does not inherit the handler's deadline:
/// its handlers (and a stream that keeps it for redelivery) must not time out
/// because the publisher's caller was in a hurry.
#[tokio::test]
async fn events_published_by_a_handler_carry_no_deadline() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let m = Catga::builder()
        .request_fn(|a: Add, ctx: Context| async move {
            assert!(ctx.deadline().is_some());
            ctx.publish(Happened { n: a.a as u32 }).await?;
            Ok(a.a)
        })
        .event_fn(move |_: Happened, ctx: Context| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(ctx.deadline().is_none());
                Ok(())
            }
        })
        .build()
        .unwrap();
    m.send_with(
        Add { a: 1, b: 0 },
        Metadata::new().with_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), [true]);
}

/// An event published, or a write staged, through the context after the
/// handler returned (from a task it spawned) cannot commit with the
/// handler's result: it fails, instead of being kept where nothing reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_handler_holds_back_after_it_returned_is_refused_not_lost() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let m = Catga::builder()
        .behavior(Idempotency::new(store.clone()))
        .outbox_without_relay(store.outbox())
        .request_fn(move |_: Deposit, ctx: Context| {
            let tx = tx.lock().unwrap().take();
            async move {
                ctx.publish(Happened { n: 1 }).await?;
                let late = ctx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let published = late.publish(Happened { n: 2 }).await;
                    let staged = late.stage(UnitOfWork::new().set("late", "1"));
                    if let Some(tx) = tx {
                        let _ = tx.send((published, staged));
                    }
                });
                Ok(0)
            }
        })
        .build()
        .unwrap();
    let deposit = Deposit {
        account: "cy".into(),
        cents: 1,
        flaky: false,
    };
    m.send(deposit).await.unwrap();
    let (published, staged) = rx.await.unwrap();
    for e in [published.unwrap_err(), staged.unwrap_err()] {
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("after the handler"), "{e}");
    }
    use catga_core::store::OutboxStore;
    assert_eq!(
        store.outbox().backlog().await.unwrap(),
        1,
        "the event published in time, alone"
    );
    assert_eq!(store.get("late"), None);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settled {
    order: u32,
}
impl Message for Settled {
    const NAME: &'static str = "once.Settled";
}
impl catga_core::Event for Settled {}

/// Two idempotent handlers of one event run at once on one dispatch, each
/// holding back what it publishes: each one's event is stored with its own
/// result, none lost and none stored twice, however their awaits interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_idempotent_handlers_of_one_event_each_store_their_own_events() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let m = Catga::builder()
        .behavior(Idempotency::new(store.clone()))
        .outbox_without_relay(store.outbox())
        .event_fn_named("receipt", |s: Settled, ctx: Context| async move {
            // Publishes after the other handler began.
            tokio::time::sleep(Duration::from_millis(30)).await;
            ctx.publish(Happened {
                n: s.order * 10 + 1,
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(())
        })
        .event_fn_named("ledger", |s: Settled, ctx: Context| async move {
            ctx.publish(Happened {
                n: s.order * 10 + 2,
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        })
        .build()
        .unwrap();
    m.publish(Settled { order: 7 }).await.unwrap();
    let mut held = outbox_events(&store).await;
    held.sort_unstable();
    assert_eq!(held, [71, 72], "each handler's event, once");
}

/// A task spawned by a failed attempt that publishes while the retry runs
/// (a `Retry` outside the idempotency behavior, on the same dispatch) does
/// not slip its event into the retry's commit: each attempt holds back into
/// a buffer of its own, closed when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_publish_from_a_failed_attempt_does_not_join_the_retry() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let m = Catga::builder()
        .behavior(
            catga_core::behavior::retry::Retry::new(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .behavior(Idempotency::new(store.clone()))
        .outbox_without_relay(store.outbox())
        .request_fn(move |_: Deposit, ctx: Context| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                if attempt == 0 {
                    let late = ctx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let published = late.publish(Happened { n: 99 }).await;
                        if let Some(tx) = tx.lock().unwrap().take() {
                            let _ = tx.send(published);
                        }
                    });
                    return Err(catga_core::Error::store("the first attempt fails"));
                }
                // The late publish happens while this attempt runs.
                tokio::time::sleep(Duration::from_millis(300)).await;
                ctx.publish(Happened { n: 2 }).await?;
                Ok(0)
            }
        })
        .build()
        .unwrap();
    m.send(Deposit {
        account: "di".into(),
        cents: 1,
        flaky: false,
    })
    .await
    .unwrap();
    let late = rx.await.unwrap().unwrap_err();
    assert_eq!(late.kind(), ErrorKind::Config, "{late}");
    let held = outbox_events(&store).await;
    assert_eq!(held, [2], "the retry's event alone");
}

/// The `Happened` events in `store`'s outbox, by their `n`, in order.
async fn outbox_events(store: &MemoryIdempotencyStore) -> Vec<u32> {
    use catga_core::store::OutboxStore;

    let entries = store
        .outbox()
        .claim("reader", 10, Duration::ZERO)
        .await
        .unwrap();
    entries
        .iter()
        .map(|e| {
            catga_core::codec::Format::MsgPack
                .decode::<Happened>(&e.record.payload)
                .unwrap()
                .n
        })
        .collect()
}
