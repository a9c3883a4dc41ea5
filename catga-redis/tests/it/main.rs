//! catga-redis against real redis-server processes (single node and cluster).

mod common;
mod effectively_once;
mod idempotency;
mod leader;
mod lock;
mod outbox;
mod saga;
#[cfg(feature = "tls")]
mod tls;

/// Without the `tls` feature, a `rediss://` URL is a configuration error that
/// says how to get TLS, not a confusing connection failure.
#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_says_which_feature_to_enable() {
    let e =
        catga_redis::RedisStore::connect(catga_redis::RedisOptions::new("rediss://127.0.0.1:1/"))
            .await
            .unwrap_err();
    assert_eq!(e.kind(), catga_core::ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("`tls` feature"), "{e}");
}
