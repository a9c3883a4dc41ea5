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

/// A Redis restarted without its data (no persistence; a replica promoted
/// without the last writes is alike) loses the fence counter with the lock.
/// The next term's fence is still above every earlier one, so messages of
/// the leaders before stay refused.
#[tokio::test]
async fn fences_keep_increasing_when_redis_loses_the_counter() {
    let mut redis = catga_test_support::RedisServer::start();
    let store = catga_redis::RedisStore::connect(catga_redis::RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let mut before = 0;
    for _ in 0..3 {
        let lease = store.try_acquire("job", ttl).await.unwrap().unwrap();
        assert!(lease.fence > before);
        before = lease.fence;
        assert!(store.release("job", &lease.token).await.unwrap());
    }
    redis.restart();
    let after = loop {
        // The connection comes back with the server.
        match store.try_acquire("job", ttl).await {
            Ok(lease) => break lease.expect("the lock is free after the restart"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(
        after.fence > before,
        "fence {} after the counter was lost, {before} before",
        after.fence
    );
    assert_eq!(store.current_fence("job").await.unwrap(), after.fence);
}

/// An acquisition Redis applied but whose answer did not come back in time
/// (a slow link) is an error to its caller. Asking again gets that term back
/// (same fence), instead of finding the lock held by the lost answer's token
/// for a whole lease with nobody leading.
#[tokio::test]
async fn an_acquisition_whose_answer_was_lost_gets_its_term_back() {
    use catga_test_support::{Fault, FaultProxy};

    let redis = catga_test_support::RedisServer::start();
    let direct = catga_redis::RedisStore::connect(catga_redis::RedisOptions::new(redis.url()))
        .await
        .unwrap();
    let proxy = FaultProxy::start(redis.port());
    let slow = catga_redis::RedisStore::connect(
        catga_redis::RedisOptions::new(proxy.url("redis")).timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let ttl = Duration::from_secs(60);
    // Load the script first: a delayed EVALSHA then applies by itself.
    let warm = slow.try_acquire("warm-up", ttl).await.unwrap().unwrap();
    assert!(slow.release("warm-up", &warm.token).await.unwrap());
    proxy.set(Fault::Delay(Duration::from_millis(600)));
    assert!(
        slow.try_acquire("job", ttl).await.is_err(),
        "the answer came in time"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let applied = loop {
        match direct.current_fence("job").await.unwrap() {
            0 => {
                assert!(tokio::time::Instant::now() < deadline, "never applied");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            fence => break fence,
        }
    };
    proxy.set(Fault::Pass);
    let lease = loop {
        match slow.try_acquire("job", ttl).await {
            Ok(lease) => break lease.expect("its own lock, not another's"),
            // The connection may need a moment after the timeout.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(lease.fence, applied, "the same term");
    assert!(
        direct.try_acquire("job", ttl).await.unwrap().is_none(),
        "held"
    );
    assert!(slow.renew("job", &lease.token, ttl).await.unwrap());
}
