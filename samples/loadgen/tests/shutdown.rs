//! A stopping copy whose servers are gone: SIGTERM to an order-service copy
//! after its NATS and its Redis were killed must end the process within its
//! shutdown grace, with a non-zero status and a message naming what was left
//! (before, such copies were still running 100 s after SIGTERM).
//!
//! The service binaries must be built next to this test (`cargo test
//! --workspace` does that; alone, build them first or set `CATGA_BIN_DIR`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use catga_test_support::{NatsServer, RedisServer, free_port, http_get, signal};

#[test]
fn sigterm_with_nats_and_redis_gone_exits_within_the_grace() {
    let bin = loadgen::topology::bin_dir().join("order-service");
    assert!(bin.is_file(), "{} not built", bin.display());
    let mut nats = NatsServer::start();
    let mut redis = RedisServer::start();
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut copy = Command::new(&bin)
        .env("CATGA_NATS_URL", nats.url())
        .env("CATGA_REDIS_URL", redis.url())
        .env("CATGA_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("CATGA_SHUTDOWN_GRACE_SECS", "3")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/health/ready").is_none_or(|(status, _)| status != 200) {
        assert!(
            copy.try_wait().unwrap().is_none(),
            "the copy exited while starting"
        );
        assert!(Instant::now() < deadline, "the copy never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    nats.kill();
    redis.kill();
    // Let it notice (its readiness fails once NATS is gone).
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/health/ready").is_some_and(|(status, _)| status == 200) {
        assert!(Instant::now() < deadline, "still ready without its servers");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(copy.id(), "TERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = copy.try_wait().unwrap() {
            break status;
        }
        if stopped.elapsed() > Duration::from_secs(20) {
            let _ = copy.kill();
            panic!(
                "still running {:?} after SIGTERM (grace 3 s): {}",
                stopped.elapsed(),
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stopped.elapsed();
    let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}, grace 3 s"
    );
    assert!(!status.success(), "what was left is reported as a failure");
    assert!(
        stderr.contains("not finished"),
        "names what was left: {stderr}"
    );
}
