use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use catga_core::store::LockStore;

use crate::common::*;

async fn lock_semantics(backend: Backend) {
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = backend.store().await;
        tasks.push(tokio::spawn(async move {
            store
                .try_acquire("report", Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "{}: exactly one winner", backend.name());
    let first = winners.remove(0);
    let store = backend.store().await;
    assert!(!store.release("report", "wrong-token").await.unwrap());
    assert!(
        store
            .try_acquire("report", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "a wrong token deleted nothing"
    );
    assert!(
        store
            .renew("report", &first.token, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew("report", "wrong-token", Duration::from_secs(30))
            .await
            .unwrap()
    );
    let mut fences = vec![first.fence];
    let mut token = first.token;
    for _ in 0..5 {
        assert!(store.release("report", &token).await.unwrap());
        let next = store
            .try_acquire("report", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        token = next.token;
        fences.push(next.fence);
    }
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences strictly increase: {fences:?}"
    );
    let distinct: HashSet<_> = fences.iter().collect();
    assert_eq!(distinct.len(), fences.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_has_one_winner_wrong_tokens_do_nothing_and_fences_increase_single_node() {
    lock_semantics(Backend::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_has_one_winner_wrong_tokens_do_nothing_and_fences_increase_cluster() {
    lock_semantics(Backend::cluster()).await;
}

#[tokio::test]
async fn an_expired_lock_goes_to_the_next_contender() {
    let backend = Backend::single();
    let store = Arc::new(backend.store().await);
    let a = store
        .try_acquire("job", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = store
        .try_acquire("job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(b.fence > a.fence);
    assert!(
        !store
            .renew("job", &a.token, Duration::from_secs(5))
            .await
            .unwrap(),
        "the old holder cannot renew"
    );
}
