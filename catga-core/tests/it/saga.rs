use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::saga::{
    MemorySagaStore, Saga, SagaCompensated, SagaCompleted, SagaState, SagaStatus, SagaStore, Step,
};
use catga_core::{Catga, Context, Error, ErrorKind, Message, Peer, Request, Uuid};
use futures_util::future::BoxFuture;

use crate::leader::Flaky;

use serde::{Deserialize, Serialize};

/// What each command did, per saga (its correlation id), in order.
type Journal = Arc<Mutex<HashMap<Uuid, Vec<String>>>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Act {
    what: String,
    fail: bool,
    sleep_ms: u64,
    /// Panic after the effect is recorded.
    panic: bool,
}
impl Message for Act {
    const NAME: &'static str = "saga.Act";
}
impl Request for Act {
    type Response = u32;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    what: String,
    fail: bool,
    /// Answer "no responders" this many times before undoing.
    unreachable: u32,
}
impl Message for Undo {
    const NAME: &'static str = "saga.Undo";
}
impl Request for Undo {
    type Response = ();
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    fail_at: Option<String>,
    slow_at: Option<String>,
    panic_at: Option<String>,
    undo_fails: bool,
    undo_unreachable: u32,
    skip_ship: bool,
    receipts: Vec<u32>,
}

fn act(name: &'static str) -> Step<Order> {
    Step::send(name, move |o: &Order| Act {
        what: name.to_owned(),
        fail: o.fail_at.as_deref() == Some(name),
        sleep_ms: if o.slow_at.as_deref() == Some(name) {
            60_000
        } else {
            0
        },
        panic: o.panic_at.as_deref() == Some(name),
    })
    .record(|o, receipt| o.receipts.push(receipt))
    .compensate(move |o: &Order| Undo {
        what: name.to_owned(),
        fail: o.undo_fails,
        unreachable: o.undo_unreachable,
    })
    .timeout(Duration::from_millis(300))
    .retries(0)
    .into()
}

fn fulfilment() -> Saga<Order> {
    Saga::new("test.fulfilment")
        .step(act("reserve"))
        .step(act("charge"))
        .step(act("ship"))
        .compensation_retries(3, Duration::from_millis(10))
        .polling(Duration::from_millis(20), Duration::from_secs(5))
}

/// A step that only undoes ("hold": what the saga's starter did before it),
/// then two steps.
fn guarded() -> Saga<Order> {
    Saga::new("test.guarded")
        .step(Step::compensation_only("hold", |o: &Order| Undo {
            what: "hold".into(),
            fail: o.undo_fails,
            unreachable: o.undo_unreachable,
        }))
        .step(act("reserve"))
        .step(act("charge"))
        .compensation_retries(3, Duration::from_millis(10))
        .polling(Duration::from_millis(20), Duration::from_secs(5))
}

async fn mediator(journal: Journal, store: Arc<dyn SagaStore>) -> Peer {
    let (j1, j2, j3) = (journal.clone(), journal.clone(), journal.clone());
    let saga = fulfilment();
    let conditional = Saga::<Order>::new("test.conditional")
        .step(act("reserve"))
        .step(
            Step::send("ship", |_: &Order| Act {
                what: "ship".into(),
                fail: false,
                sleep_ms: 0,
                panic: false,
            })
            .when(|o| !o.skip_ship),
        )
        .polling(Duration::from_millis(20), Duration::from_secs(5));
    Catga::builder()
        .saga_store(store)
        .saga(saga)
        .saga(conditional)
        .saga(guarded())
        .request_fn(move |a: Act, ctx: Context| {
            let j = j1.clone();
            async move {
                if a.sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(a.sleep_ms)).await;
                }
                if a.fail {
                    return Err(Error::handler(
                        "test.refused",
                        format!("{} refused", a.what),
                    ));
                }
                let len = {
                    let mut j = j.lock().unwrap();
                    let log = j.entry(ctx.correlation_id()).or_default();
                    log.push(a.what.clone());
                    log.len() as u32
                };
                // Written, then gone wrong: the effect exists.
                assert!(!a.panic, "{} panicked after its write", a.what);
                Ok(len)
            }
        })
        .request_fn(move |u: Undo, ctx: Context| {
            let j = j2.clone();
            async move {
                if u.fail {
                    return Err(Error::handler("test.stuck", "cannot undo"));
                }
                let mut j = j.lock().unwrap();
                let log = j.entry(ctx.correlation_id()).or_default();
                let tried = format!("unreachable undo {}", u.what);
                if log.iter().filter(|w| **w == tried).count() < u.unreachable as usize {
                    // What NATS answers while the service restarts.
                    log.push(tried);
                    return Err(Error::new(ErrorKind::NoHandler, "no responders"));
                }
                log.push(format!("undo {}", u.what));
                Ok(())
            }
        })
        .event_fn(move |e: SagaCompleted, _| {
            let j = j3.clone();
            async move {
                j.lock()
                    .unwrap()
                    .entry(e.id)
                    .or_default()
                    .push("event completed".into());
                Ok(())
            }
        })
        .event_fn(|_: SagaCompensated, _| async { Ok(()) })
        .start()
        .await
        .unwrap()
}

/// Waits until saga `id` finishes (60 s at most) and returns its state.
pub(crate) async fn finished(m: &Peer, id: Uuid) -> SagaState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = m.saga_state(id).await.unwrap().expect("the saga exists");
        if state.status.is_finished() {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga never finished: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn started() -> (Journal, Peer) {
    let journal = Journal::default();
    let m = mediator(journal.clone(), Arc::new(MemorySagaStore::new())).await;
    (journal, m)
}

fn log(j: &Journal, id: Uuid) -> Vec<String> {
    j.lock().unwrap().get(&id).cloned().unwrap_or_default()
}

/// Starts `order` on the fulfilment saga and waits for its end: its state
/// and id.
async fn fulfil(m: &Peer, order: Order) -> (SagaState, Uuid) {
    let id = fulfilment().handle(m).unwrap().start(order).await.unwrap();
    (finished(m, id).await, id)
}

#[tokio::test]
async fn the_happy_path_runs_every_step_and_records_responses() {
    let (j, m) = started().await;
    let id = fulfilment()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.data::<Order>().unwrap().receipts, vec![1, 2, 3]);
    let whats: Vec<_> = state
        .history
        .iter()
        .map(|h| format!("{}:{}", h.step, h.what))
        .collect();
    assert!(whats.contains(&"charge:completed".to_owned()), "{whats:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        log(&j, id),
        ["reserve", "charge", "ship", "event completed"]
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failure_at_step_three_compensates_steps_two_then_one() {
    let (j, m) = started().await;
    let order = Order {
        fail_at: Some("ship".into()),
        ..Order::default()
    };
    let (state, id) = fulfil(&m, order).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.failed_step.as_deref(), Some("ship"));
    assert!(
        state.error.as_deref().unwrap().contains("ship refused"),
        "{state:?}"
    );
    assert_eq!(
        log(&j, id),
        ["reserve", "charge", "undo charge", "undo reserve"]
    );
    m.shutdown().await.unwrap();
}

/// A compensation-only step sends nothing and saves nothing of its own going
/// forward, and is compensated like any completed step.
#[tokio::test]
async fn a_compensation_only_step_costs_nothing_forward_and_is_undone_on_failure() {
    let (j, m) = started().await;
    let id = guarded()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Completed);
    let commands: Vec<String> = log(&j, id)
        .into_iter()
        .filter(|w| !w.starts_with("event"))
        .collect();
    assert_eq!(commands, ["reserve", "charge"], "no message for `hold`");
    assert!(
        state
            .history
            .iter()
            .any(|h| h.step == "hold" && h.what == "completed"),
        "{state:?}"
    );
    // Created (0), saved with `reserve` (1), with `charge` and the end (2):
    // `hold` was saved with the step after it.
    assert_eq!(state.version, 2, "{state:?}");

    let order = Order {
        fail_at: Some("charge".into()),
        ..Order::default()
    };
    let id = guarded().handle(&m).unwrap().start(order).await.unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(log(&j, id), ["reserve", "undo reserve", "undo hold"]);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_step_timeout_compensates() {
    let (j, m) = started().await;
    let order = Order {
        slow_at: Some("charge".into()),
        ..Order::default()
    };
    let (state, id) = fulfil(&m, order).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.failed_step.as_deref(), Some("charge"));
    assert!(
        state.error.as_deref().unwrap().contains("timeout"),
        "{state:?}"
    );
    // The charge may have happened (its outcome is unknown): it is undone too.
    assert_eq!(log(&j, id), ["reserve", "undo charge", "undo reserve"]);
    m.shutdown().await.unwrap();
}

/// A step whose handler wrote and then panicked: the failure is final, but
/// not the handler's "no", so the step may have happened and is undone with
/// the others (a charge kept without its refund otherwise).
#[tokio::test]
async fn a_step_that_panics_after_its_effect_is_compensated() {
    let (j, m) = started().await;
    let order = Order {
        panic_at: Some("charge".into()),
        ..Order::default()
    };
    let (state, id) = fulfil(&m, order).await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.failed_step.as_deref(), Some("charge"));
    assert!(
        state
            .history
            .iter()
            .any(|h| h.step == "charge" && h.what == "gave_up"),
        "{state:?}"
    );
    assert_eq!(
        log(&j, id),
        ["reserve", "charge", "undo charge", "undo reserve"]
    );
    m.shutdown().await.unwrap();
}

/// A compensation whose service is away for a while ("no responders", more
/// times than `compensation_retries` allows): asked again until it answers,
/// not marked failed.
#[tokio::test]
async fn a_compensation_through_a_short_outage_still_compensates() {
    let (j, m) = started().await;
    let order = Order {
        fail_at: Some("charge".into()),
        undo_unreachable: 6,
        ..Order::default()
    };
    let (state, id) = fulfil(&m, order).await;
    assert_eq!(state.status, SagaStatus::Compensated, "{state:?}");
    let log = log(&j, id);
    assert_eq!(
        log.iter().filter(|w| w.starts_with("unreachable")).count(),
        6,
        "{log:?}"
    );
    let done: Vec<&String> = log
        .iter()
        .filter(|w| !w.starts_with("unreachable"))
        .collect();
    assert_eq!(done, ["reserve", "undo reserve"]);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_marks_the_saga_failed_for_an_operator() {
    let store = Arc::new(MemorySagaStore::new());
    let m = mediator(Journal::default(), store.clone()).await;
    let order = Order {
        fail_at: Some("charge".into()),
        undo_fails: true,
        ..Order::default()
    };
    let (state, id) = fulfil(&m, order).await;
    assert_eq!(state.status, SagaStatus::Failed);
    assert_eq!(state.failed_step.as_deref(), Some("reserve"));
    let reason = state.error.unwrap();
    assert!(
        reason.contains("after 3 attempts") && reason.contains("cannot undo"),
        "{reason}"
    );
    // Listed for an operator; resumed, the coordinator compensates again
    // (and fails again here: its undo still cannot succeed).
    assert_eq!(store.failed("test.fulfilment").await.unwrap(), vec![id]);
    let resumed = catga_core::saga::resume_compensation(&*store, id)
        .await
        .unwrap();
    assert_eq!(resumed.status, SagaStatus::Compensating);
    assert!(store.failed("test.fulfilment").await.unwrap().is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.load(id).await.unwrap().unwrap();
        let attempts = s
            .history
            .iter()
            .filter(|h| h.what == "compensation_failed")
            .count();
        if s.status == SagaStatus::Failed && attempts == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not compensated again: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = catga_core::saga::resume_compensation(&*store, catga_core::new_id())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn conditional_steps_are_skipped() {
    let (j, m) = started().await;
    let conditional = Saga::<Order>::new("test.conditional");
    let id = conditional
        .handle(&m)
        .unwrap()
        .start(Order {
            skip_ship: true,
            ..Order::default()
        })
        .await
        .unwrap();
    let state = finished(&m, id).await;
    assert_eq!(state.status, SagaStatus::Completed);
    let done = log(&j, id);
    assert_eq!(done[0], "reserve");
    assert!(!done.contains(&"ship".to_owned()), "{done:?}");
    assert!(
        state
            .history
            .iter()
            .any(|h| h.step == "ship" && h.what == "skipped")
    );
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sagas_complete_with_no_lost_or_duplicated_step() {
    let (j, m) = started().await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            fulfilment()
                .handle(&m)
                .unwrap()
                .start(Order::default())
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        assert_eq!(finished(&m, *id).await.status, SagaStatus::Completed);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in &ids {
        assert_eq!(
            log(&j, *id),
            ["reserve", "charge", "ship", "event completed"]
        );
    }
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn unregistered_sagas_cannot_start() {
    let (_, m) = started().await;
    let err = Saga::<Order>::new("test.unknown").handle(&m).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn a_stale_coordinator_cannot_write() {
    let store = MemorySagaStore::new();
    let (_, m) = started().await;
    let id = fulfilment()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    let state = finished(&m, id).await;
    store.create(&state).await.unwrap();
    let mut newer = state.clone();
    newer.version += 1;
    newer.fence = state.fence + 5;
    store.save(&newer).await.unwrap();
    let mut stale = newer.clone();
    stale.version += 1;
    stale.fence = state.fence;
    let err = store.save(&stale).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let mut old_version = newer.clone();
    old_version.fence += 1;
    let err = store.save(&old_version).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "a save must name the version it read"
    );
    m.shutdown().await.unwrap();
}

/// A saga with a bounded backlog turns new starts away while the backlog is
/// full (here: three started on a peer whose coordinator has not run yet),
/// and admits again once the coordinator drained it.
#[tokio::test]
async fn a_full_saga_backlog_is_refused_at_once_and_drains() {
    let journal = Journal::default();
    let saga = || fulfilment().max_backlog(3);
    // Steps wait until the refusal was seen: the backlog cannot drain first.
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let m = Catga::builder()
        .saga(saga())
        .request_fn(move |a: Act, ctx: Context| {
            let (j, gate) = (journal.clone(), gate.clone());
            async move {
                while !gate.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                j.lock()
                    .unwrap()
                    .entry(ctx.correlation_id())
                    .or_default()
                    .push(a.what);
                Ok(1)
            }
        })
        .start()
        .await
        .unwrap();
    let mut ids = Vec::new();
    // A start repeated with one id (a caller's retry) is one saga of the
    // backlog, not three.
    let again = catga_core::new_id();
    for _ in 0..3 {
        saga().handle(&m).unwrap().admit().await.unwrap();
        saga()
            .handle(&m)
            .unwrap()
            .start_with_id(again, Order::default())
            .await
            .unwrap();
    }
    ids.push(again);
    for _ in 0..2 {
        saga().handle(&m).unwrap().admit().await.unwrap();
        ids.push(
            saga()
                .handle(&m)
                .unwrap()
                .start(Order::default())
                .await
                .unwrap(),
        );
    }
    let e = saga().handle(&m).unwrap().admit().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
    assert_eq!(e.code(), Some("catga.saga_backlog"));
    assert!(e.is_retryable());
    open.store(true, std::sync::atomic::Ordering::SeqCst);

    for id in ids {
        assert_eq!(finished(&m, id).await.status, SagaStatus::Completed);
    }
    // The count is read again from the store (at most every 100 ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while saga().handle(&m).unwrap().admit().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.shutdown().await.unwrap();
}

/// A saga store in memory with faults and counts for tests: it counts
/// loads, can answer a finishing save with an error although it stored it
/// (a lost reply), can answer a create late, and can fail every save after
/// the first until a given time (not stored).
#[derive(Default)]
struct Hooked {
    inner: MemorySagaStore,
    loads: std::sync::atomic::AtomicUsize,
    lose_final_reply: bool,
    slow_create: Option<Duration>,
    fail_later_saves_until: Option<tokio::time::Instant>,
    saves: std::sync::atomic::AtomicUsize,
}

impl SagaStore for Hooked {
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, catga_core::Result<bool>> {
        Box::pin(async move {
            let created = self.inner.create(state).await?;
            if let Some(late) = self.slow_create {
                tokio::time::sleep(late).await;
            }
            Ok(created)
        })
    }
    fn load(&self, id: Uuid) -> BoxFuture<'_, catga_core::Result<Option<SagaState>>> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load(id)
    }
    fn save<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, catga_core::Result<()>> {
        Box::pin(async move {
            let n = self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let away = self
                .fail_later_saves_until
                .is_some_and(|until| n > 1 && tokio::time::Instant::now() < until);
            if away {
                return Err(Error::store("the store is away"));
            }
            self.inner.save(state).await?;
            if self.lose_final_reply && state.status.is_finished() {
                return Err(Error::store("the reply was lost"));
            }
            Ok(())
        })
    }
    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, catga_core::Result<Vec<Uuid>>> {
        self.inner.unfinished(saga)
    }
    fn forget<'a>(&'a self, saga: &'a str, id: Uuid) -> BoxFuture<'a, catga_core::Result<()>> {
        self.inner.forget(saga, id)
    }
}

/// The final save was stored although it answered an error: the saga is
/// finished (and off the unfinished list), so its end is announced all the
/// same, once.
#[tokio::test]
async fn a_final_save_stored_despite_an_error_still_announces_the_end() {
    let journal = Journal::default();
    let store = Arc::new(Hooked {
        lose_final_reply: true,
        ..Hooked::default()
    });
    let m = mediator(journal.clone(), store.clone()).await;
    let id = fulfilment()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    assert_eq!(finished(&m, id).await.status, SagaStatus::Completed);
    eventually_logged(&journal, id, "event completed").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let announced = log(&journal, id)
        .iter()
        .filter(|w| *w == "event completed")
        .count();
    assert_eq!(announced, 1);
    m.shutdown().await.unwrap();
}

/// Waits (30 s at most) until `what` is in saga `id`'s journal.
async fn eventually_logged(journal: &Journal, id: Uuid, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !log(journal, id).iter().any(|w| w == what) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never logged `{what}`: {:?}",
            log(journal, id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A saga whose data this version cannot decode stops its driver every time:
/// it rests longer and longer between tries (from 200 ms, doubling, up to
/// 10 s) instead of being loaded and logged at every listing (every 20 ms
/// here).
#[tokio::test]
async fn a_saga_that_cannot_go_on_rests_between_tries() {
    let journal = Journal::default();
    let store = Arc::new(Hooked::default());
    let broken = stored_elsewhere("test.fulfilment", &"not an order");
    store.inner.create(&broken).await.unwrap();
    let m = mediator(journal.clone(), store.clone()).await;
    let loads = || store.loads.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while loads() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Tries at about 0, 0.2, 0.6, 1.4 s (rests jittered to half and more):
    // at most a handful, where every listing would be about a hundred.
    assert!(loads() <= 8, "loaded {} times in about 2 s", loads());
    let state = store.inner.load(broken.id).await.unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Running, "left as it was");
    m.shutdown().await.unwrap();
}

/// A saga saved in a later term than the coordinator's (the lock's fence
/// counter went backwards: its key evicted, its Redis replaced) is not
/// driven: no step is sent again and again only to have every save refused.
#[tokio::test]
async fn a_saga_saved_with_a_fence_ahead_of_the_coordinators_is_not_driven() {
    let journal = Journal::default();
    let store = Arc::new(Hooked::default());
    let mut ahead = stored_elsewhere("test.fulfilment", &Order::default());
    ahead.fence = 100;
    store.inner.create(&ahead).await.unwrap();
    let m = mediator(journal.clone(), store.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.loads.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        log(&journal, ahead.id).is_empty(),
        "{:?}",
        log(&journal, ahead.id)
    );
    let state = store.inner.load(ahead.id).await.unwrap().unwrap();
    assert_eq!((state.status, state.version), (SagaStatus::Running, 0));
    m.shutdown().await.unwrap();
}

/// A start slow to hand its saga over, after the listing found it and drove
/// it to its end: the stale state it hands over is not driven again (each
/// step sent once).
#[tokio::test]
async fn a_saga_handed_over_after_the_listing_drove_it_is_not_driven_again() {
    let journal = Journal::default();
    // Longer than an idle coordinator's listing interval (1 s at most), so
    // that a listing finds the saga meanwhile.
    let store = Arc::new(Hooked {
        slow_create: Some(Duration::from_millis(1500)),
        ..Hooked::default()
    });
    let m = mediator(journal.clone(), store.clone()).await;
    let id = fulfilment()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    assert_eq!(finished(&m, id).await.status, SagaStatus::Completed);
    // The listing drove it while its start still waited on the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let steps: Vec<String> = log(&journal, id)
        .into_iter()
        .filter(|w| !w.starts_with("event"))
        .collect();
    assert_eq!(steps, ["reserve", "charge", "ship"], "each step once");
    m.shutdown().await.unwrap();
}

/// The same race, with the listing's driver stopped by store errors after
/// it saved a step (the saga resting when the stale state arrives): that
/// state is not driven either (its first step would be sent again, or the
/// saga left behind for the term), and the saga goes on from what was saved
/// once the store is back.
#[tokio::test]
async fn a_stale_hand_over_after_a_driver_stopped_on_an_error_is_not_driven() {
    let journal = Journal::default();
    let store = Arc::new(Hooked {
        slow_create: Some(Duration::from_millis(1500)),
        // `reserve` is saved; the saves after it fail until after the start
        // hands its (by then stale) state over.
        fail_later_saves_until: Some(tokio::time::Instant::now() + Duration::from_millis(2500)),
        ..Hooked::default()
    });
    let m = mediator(journal.clone(), store.clone()).await;
    let id = fulfilment()
        .handle(&m)
        .unwrap()
        .start(Order::default())
        .await
        .unwrap();
    assert_eq!(finished(&m, id).await.status, SagaStatus::Completed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = log(&journal, id);
    let sent = |what: &str| log.iter().filter(|w| *w == what).count();
    assert_eq!(sent("reserve"), 1, "{log:?}");
    // `charge` is sent again after each failed save: its outcome was not saved.
    assert!(sent("charge") >= 1, "{log:?}");
    assert_eq!(sent("ship"), 1, "{log:?}");
    m.shutdown().await.unwrap();
}

/// A saga started on the peer whose coordinator leads is handed to it with
/// the state its start stored: driven to the end without one load. One
/// stored by another peer (here: straight into the store) is found by the
/// listing and loaded.
#[tokio::test]
async fn a_saga_started_on_the_leading_peer_is_driven_without_loading_it() {
    let journal = Journal::default();
    let store = Arc::new(Hooked::default());
    let m = mediator(journal.clone(), store.clone()).await;
    let loads = || store.loads.load(std::sync::atomic::Ordering::SeqCst);
    let completed = |id| log(&journal, id).contains(&"event completed".to_owned());
    let wait = |id| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !completed(id) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {id} never completed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let handle = fulfilment().handle(&m).unwrap().clone();
    // The coordinator leads once it listed for the first time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..3 {
        let id = handle.start(Order::default()).await.unwrap();
        wait(id).await;
        assert!(tokio::time::Instant::now() < deadline);
    }
    let by_start = loads();
    let id = handle.start(Order::default()).await.unwrap();
    wait(id).await;
    assert_eq!(loads(), by_start, "a saga started here was loaded");
    assert_eq!(
        log(&journal, id),
        ["reserve", "charge", "ship", "event completed"]
    );

    // Started elsewhere: stored, never handed over.
    let elsewhere = stored_elsewhere("test.fulfilment", &Order::default());
    store.create(&elsewhere).await.unwrap();
    wait(elsewhere.id).await;
    assert!(loads() > by_start, "a saga from the store is loaded");
    m.shutdown().await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    millis: u64,
}
impl Message for Work {
    const NAME: &'static str = "saga.Work";
}
impl Request for Work {
    type Response = ();
}

/// Starts on the leading peer, however many, do not keep its coordinator
/// from listing: a saga started elsewhere (stored straight into the store)
/// is driven long before a backlog of local starts drains (one driver at a
/// time, the two sources taking turns).
#[tokio::test]
async fn local_starts_do_not_starve_sagas_started_elsewhere() {
    let done: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let d = done.clone();
    let store = Arc::new(MemorySagaStore::new());
    let busy = || {
        Saga::<u64>::new("test.busy")
            .step(
                Step::send("work", |ms: &u64| Work { millis: *ms })
                    .timeout(Duration::from_secs(30)),
            )
            .max_concurrent(1)
            .polling(Duration::from_millis(20), Duration::from_secs(5))
    };
    let m = Catga::builder()
        .saga_store(store.clone())
        .saga(busy())
        .request_fn(move |w: Work, ctx: Context| {
            let d = d.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(w.millis)).await;
                d.lock().unwrap().push(ctx.correlation_id());
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let handle = busy().handle(&m).unwrap().clone();
    // Leading: a first saga ran.
    let first = handle.start(1).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done.lock().unwrap().contains(&first) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first saga never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        handle.start(30).await.unwrap();
    }
    let elsewhere = stored_elsewhere("test.busy", &30u64);
    store.create(&elsewhere).await.unwrap();
    while done.lock().unwrap().len() < 22 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sagas never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let order = done.lock().unwrap().clone();
    let at = order.iter().position(|id| *id == elsewhere.id).unwrap();
    assert!(
        at <= 10,
        "the saga started elsewhere ran as number {at} of 22, behind the local backlog"
    );
    m.shutdown().await.unwrap();
}

/// A new saga as another peer's start stores it (never handed over here).
fn stored_elsewhere(saga: &str, data: &impl Serialize) -> SagaState {
    SagaState {
        id: Uuid::now_v7(),
        saga: saga.into(),
        status: SagaStatus::Running,
        step: 0,
        completed: Vec::new(),
        data: catga_core::Format::MsgPack.encode(data).unwrap(),
        version: 0,
        fence: 0,
        history: Vec::new(),
        error: None,
        failed_step: None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Gated {
    block: bool,
}
impl Message for Gated {
    const NAME: &'static str = "saga.Gated";
}
impl Request for Gated {
    type Response = ();
}

/// Sagas handed to a coordinator that then loses its lease are not lost:
/// five sagas started on the leading peer wait (handed over, with their
/// state) behind a driver blocked in its step; the peer is cut off from the
/// lock store and deposed; the next leader finds all six in the store and
/// drives each, and every step's effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_sagas_survive_their_coordinator_losing_its_lease() {
    let locks = Arc::new(catga_core::store::MemoryLockStore::new());
    let store = Arc::new(MemorySagaStore::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Semaphore::new(0));
    let effects: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let saga = || {
        Saga::<bool>::new("test.handed")
            .step(
                Step::send("work", |block: &bool| Gated { block: *block })
                    .timeout(Duration::from_secs(60)),
            )
            .max_concurrent(1)
            .polling(Duration::from_millis(20), Duration::from_millis(500))
    };
    let peer = |lock: Arc<Flaky>| {
        let (gate, entered, effects) = (gate.clone(), entered.clone(), effects.clone());
        Catga::builder()
            .lock_store(lock)
            .saga_store(store.clone())
            .saga(saga())
            .request_fn(move |g: Gated, ctx: Context| {
                let (gate, entered, effects) = (gate.clone(), entered.clone(), effects.clone());
                async move {
                    if g.block {
                        entered.add_permits(1);
                        let _pass = gate.acquire().await;
                    }
                    *effects
                        .lock()
                        .unwrap()
                        .entry(ctx.correlation_id())
                        .or_default() += 1;
                    Ok(())
                }
            })
            .start()
    };
    let leads = |p: &Peer| p.leading().iter().any(|t| t == "catga.saga.test.handed");
    let until = |what: &'static str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        move || assert!(tokio::time::Instant::now() < deadline, "{what}")
    };

    let cut_lock = Flaky::over(&locks);
    let a = peer(cut_lock.clone()).await.unwrap();
    let handle = saga().handle(&a).unwrap().clone();
    let check = until("peer a never led");
    while !leads(&a) {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let blocked = handle.start(true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), entered.acquire())
        .await
        .expect("the first saga's step runs on peer a")
        .unwrap()
        .forget();
    // Handed to a's coordinator, waiting behind the blocked driver.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(handle.start(false).await.unwrap());
    }

    cut_lock
        .cut_off
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let check = until("peer a was never deposed");
    while leads(&a) {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = peer(Flaky::over(&locks)).await.unwrap();
    let check = until("peer b never led");
    while !leads(&b) {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(1_000);

    for id in waiting.iter().chain([&blocked]) {
        let state = finished(&b, *id).await;
        assert_eq!(state.status, SagaStatus::Completed, "{state:?}");
    }
    let effects = effects.lock().unwrap().clone();
    for id in waiting.iter().chain([&blocked]) {
        assert_eq!(effects.get(id), Some(&1), "saga {id}: {effects:?}");
    }
    assert!(
        !leads(&a),
        "a deposed peer does not lead again while cut off"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: i64,
}
impl Message for Charge {
    const NAME: &'static str = "saga.Charge";
    const IDEMPOTENT: bool = true;
}
impl Request for Charge {
    type Response = ();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    cents: i64,
}
impl Message for Refund {
    const NAME: &'static str = "saga.Refund";
    const IDEMPOTENT: bool = true;
}
impl Request for Refund {
    type Response = ();
}

/// A step whose handler outlived its idempotency claim (its peer paused past
/// the lease) gets `catga.claim_lost`: the outcome is unknown, and asking
/// again with the same message id gets it (the stored one, or a run that
/// takes the claim). The saga asks again instead of compensating a charge
/// that the second attempt makes once: charged once, never refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_claim_ran_out_is_asked_again_not_compensated() {
    use catga_core::store::{MemoryIdempotencyStore, UnitOfWork};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let store = Arc::new(MemoryIdempotencyStore::new());
    let attempts = Arc::new(AtomicUsize::new(0));
    let refunds = Arc::new(AtomicUsize::new(0));
    let (a, r) = (attempts.clone(), refunds.clone());
    let saga = || {
        Saga::<i64>::new("test.claim_lost")
            .step(
                Step::send("charge", |cents: &i64| Charge { cents: *cents })
                    .compensate(|cents: &i64| Refund { cents: *cents })
                    .timeout(Duration::from_secs(10))
                    .retries(3),
            )
            .polling(Duration::from_millis(20), Duration::from_secs(5))
    };
    let peer = Catga::builder()
        .idempotency_with(store.clone(), |i| {
            i.lease(Duration::from_millis(60))
                .wait(Duration::from_secs(10))
        })
        .saga(saga())
        .request_fn(move |c: Charge, ctx: Context| {
            let a = a.clone();
            async move {
                if a.fetch_add(1, Ordering::SeqCst) == 0 {
                    // A pause past the lease between claim and completion,
                    // as in a paused peer: the completion finds the claim
                    // run out.
                    std::thread::sleep(Duration::from_millis(300));
                }
                ctx.stage(UnitOfWork::new().increment("charged", c.cents))
            }
        })
        .request_fn(move |f: Refund, ctx: Context| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                ctx.stage(UnitOfWork::new().increment("charged", -f.cents))
            }
        })
        .start()
        .await
        .unwrap();

    let id = saga().handle(&peer).unwrap().start(1500).await.unwrap();
    let state = finished(&peer, id).await;
    assert_eq!(state.status, SagaStatus::Completed, "{state:?}");
    assert_eq!(refunds.load(Ordering::SeqCst), 0);
    // At least the paused attempt and the one asked again (a loaded machine
    // may pause the second past its lease too).
    assert!(attempts.load(Ordering::SeqCst) >= 2);
    assert_eq!(store.get("charged").as_deref(), Some(&b"1500"[..]));
    peer.shutdown().await.unwrap();
}
