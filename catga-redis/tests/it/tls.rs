//! Redis over TLS (`rediss://`) against a real redis-server, with a CA made by
//! the test. Runs with the `tls` feature:
//! `cargo test -p catga-redis --features tls --test it tls`.

use std::time::Duration;

use catga_core::store::{Claim, IdempotencyStore};
use catga_redis::{RedisOptions, RedisStore};
use catga_test_support::{RedisServer, TestCa};

#[tokio::test]
async fn the_stores_work_over_tls_with_a_private_ca() {
    let ca = TestCa::generate();
    let redis = RedisServer::start_tls(&ca);
    let url = redis.tls_url().unwrap();
    let store = RedisStore::connect(RedisOptions::new(url.clone()).tls_root_certificates(ca.ca()))
        .await
        .unwrap();
    let claimed = store
        .claim("tls-key", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Acquired { .. }), "{claimed:?}");
    assert_eq!(
        store
            .claim("tls-key", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::InProgress
    );
    // Without the CA the server is not trusted: a clear error, not a hang.
    let e = RedisStore::connect(RedisOptions::new(url).timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect to Redis"), "{e}");
}
