use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use catga_core::Uuid;
use catga_core::store::{
    Claim, Completed, Completion, IdempotencyStore, LockStore, MemoryIdempotencyStore,
    MemoryLockStore, MemoryOutboxStore, OutboxRecord, OutboxStore, UnitOfWork,
};

#[tokio::test(start_paused = true)]
async fn idempotency_store_moves_through_its_states() {
    let s = MemoryIdempotencyStore::new();
    let Claim::Acquired { token } = IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("first claim must be acquired");
    };
    assert_eq!(
        IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::InProgress
    );
    assert!(
        s.complete(
            "k",
            "wrong-token",
            Completion::new("x".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            != Completed::Stored
    );
    assert!(
        s.complete(
            "k",
            &token,
            Completion::new("resp".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            == Completed::Stored
    );
    assert_eq!(
        IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Completed("resp".into())
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(matches!(
        IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Acquired { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_cannot_overwrite_a_newer_attempt() {
    let s = MemoryIdempotencyStore::new();
    let Claim::Acquired { token: old } = IdempotencyStore::claim(&s, "k", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!()
    };
    tokio::time::advance(Duration::from_secs(2)).await;
    let Claim::Acquired { token: new } = IdempotencyStore::claim(&s, "k", Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!("an expired lease frees the key")
    };
    assert!(
        s.complete(
            "k",
            &old,
            Completion::new("stale".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            != Completed::Stored
    );
    assert!(
        s.complete(
            "k",
            &new,
            Completion::new("fresh".into(), Duration::from_secs(60))
        )
        .await
        .unwrap()
            == Completed::Stored
    );
}

#[tokio::test]
async fn lock_has_one_winner_among_ten_and_fences_increase() {
    let store = Arc::new(MemoryLockStore::new());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .try_acquire("job", Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1);
    let first = winners.remove(0);
    assert!(!store.release("job", "not-the-token").await.unwrap());
    assert!(
        store
            .try_acquire("job", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .renew("job", &first.token, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(store.release("job", &first.token).await.unwrap());
    let second = store
        .try_acquire("job", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(second.fence > first.fence);
    assert!(
        !store
            .renew("job", &first.token, Duration::from_secs(30))
            .await
            .unwrap()
    );
}

fn record(n: u8) -> OutboxRecord {
    OutboxRecord {
        name: "test.Happened".into(),
        payload: vec![n].into(),
        content_type: "application/msgpack".into(),
        message_id: Uuid::now_v7(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        headers: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn outbox_hands_entries_out_once_and_reclaims_idle_ones() {
    let s = MemoryOutboxStore::new();
    s.append((0..5).map(record).collect()).await.unwrap();
    let a = s
        .claim("relay-a", 3, Duration::from_secs(30))
        .await
        .unwrap();
    let b = s
        .claim("relay-b", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((a.len(), b.len()), (3, 2));
    let ids: HashSet<_> = a.iter().chain(&b).map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    // relay-a dies; after the idle time its entries go to relay-b.
    s.ack(&b.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        s.claim("relay-b", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    let reclaimed = s
        .claim("relay-b", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 3);
    assert!(reclaimed.iter().all(|e| e.deliveries == 2));
    s.dead_letter(&reclaimed[0], "poison").await.unwrap();
    s.ack(
        &reclaimed[1..]
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(s.backlog().await.unwrap(), 0);
    assert_eq!(s.dead_letters().len(), 1);
}

/// Completes a fresh claim of `key` with `work` (and one event).
async fn complete_with(s: &MemoryIdempotencyStore, key: &str, work: UnitOfWork) -> Completed {
    let Claim::Acquired { token } = IdempotencyStore::claim(s, key, Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    let done = Completion::new("resp".into(), Duration::from_secs(60))
        .events(vec![record(1)])
        .work(work);
    s.complete(key, &token, done).await.unwrap()
}

/// A write that does not fit what its key holds (an increment of text, a
/// hash write to a list) fails the completion with nothing written: not the
/// writes before it, not the record, not the events. Redis's script checks
/// the same before its first write (catga-redis has the twin of this test).
#[tokio::test]
async fn a_write_that_does_not_fit_its_key_writes_nothing() {
    let s = MemoryIdempotencyStore::new();
    let setup = UnitOfWork::new()
        .set("acct", "ten")
        .set("padded", "007")
        .append("orders", "o1");
    assert_eq!(complete_with(&s, "setup", setup).await, Completed::Stored);
    let events = s.outbox().backlog().await.unwrap();

    let unfit = UnitOfWork::new().append("ledger", "x").increment("acct", 5);
    assert_eq!(
        complete_with(&s, "k1", unfit).await,
        Completed::WrongType { key: "acct".into() }
    );
    let unfit = UnitOfWork::new()
        .increment("count", 1)
        .hash_set("orders", "f", "v");
    assert_eq!(
        complete_with(&s, "k2", unfit).await,
        Completed::WrongType {
            key: "orders".into()
        }
    );
    // Unfit as the writes before it in the same unit leave the key, or as
    // Redis reads a number ("007" is not one).
    for (unfit, key) in [
        (
            UnitOfWork::new()
                .append("ledger", "x")
                .set("count", "abc")
                .increment("count", 1),
            "count",
        ),
        (
            UnitOfWork::new()
                .append("ledger", "x")
                .hash_set("totals", "n", "x")
                .hash_increment("totals", "n", 1),
            "totals",
        ),
        (
            UnitOfWork::new()
                .append("ledger", "x")
                .increment("padded", 1),
            "padded",
        ),
    ] {
        assert_eq!(
            complete_with(&s, &format!("k-{key}"), unfit).await,
            Completed::WrongType { key: key.into() }
        );
    }
    assert!(s.list("ledger").is_empty(), "no write before the unfit one");
    assert_eq!(s.get("count"), None);
    assert_eq!(s.get("padded").as_deref(), Some(&b"007"[..]));
    assert_eq!(s.get("acct").as_deref(), Some(&b"ten"[..]));
    assert_eq!(s.list("orders").len(), 1);
    assert_eq!(s.outbox().backlog().await.unwrap(), events, "no event");
    assert_eq!(
        IdempotencyStore::claim(&s, "k1", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::InProgress,
        "nothing stored; the claim is still held"
    );
    // Writes that fit are applied.
    let fit = UnitOfWork::new()
        .increment("count", 2)
        .append("ledger", "y");
    assert_eq!(complete_with(&s, "k3", fit).await, Completed::Stored);
    assert_eq!(s.get("count").as_deref(), Some(&b"2"[..]));
    assert_eq!(s.list("ledger").len(), 1);
}

/// An attempt that outlived its lease has lost its claim, even when nobody
/// took the key over yet: its completion stores nothing (as on Redis, where
/// the claim has expired), and the next claim runs again.
#[tokio::test(start_paused = true)]
async fn a_completion_past_its_lease_is_lost_even_when_nobody_took_over() {
    let s = MemoryIdempotencyStore::new();
    let Claim::Acquired { token } = IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    tokio::time::advance(Duration::from_secs(6)).await;
    let late = Completion::new("late".into(), Duration::from_secs(60))
        .work(UnitOfWork::new().set("written", "1"));
    assert_eq!(
        s.complete("k", &token, late).await.unwrap(),
        Completed::ClaimLost
    );
    assert_eq!(s.get("written"), None, "nothing written");
    assert!(matches!(
        IdempotencyStore::claim(&s, "k", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Acquired { .. }
    ));
}
