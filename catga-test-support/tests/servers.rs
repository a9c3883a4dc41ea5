//! The servers start, answer, restart and die with their handles.

use catga_test_support::{NatsCluster, NatsServer, RedisCluster, RedisServer};

fn accepts(url: &str) -> bool {
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn nats_server_starts_restarts_and_dies_on_drop() {
    let mut s = NatsServer::start();
    let url = s.url();
    assert!(accepts(&url));
    s.restart();
    assert!(accepts(&url));
    drop(s);
    assert!(!accepts(&url));
}

#[test]
fn nats_cluster_has_three_routed_nodes() {
    let mut c = NatsCluster::start();
    assert_eq!(c.urls().len(), 3);
    c.kill(0);
    assert!(!accepts(&c.url(0)));
    assert!(accepts(&c.url(1)));
}

#[test]
fn redis_server_with_aof_starts_and_restarts() {
    let mut s = RedisServer::start_with_aof();
    let url = s.url();
    assert!(accepts(&url));
    s.restart();
    assert!(accepts(&url));
    drop(s);
    assert!(!accepts(&url));
}

#[test]
fn redis_cluster_forms() {
    let c = RedisCluster::start();
    assert_eq!(c.len(), 3);
    assert!(c.urls().iter().all(|u| accepts(u)));
}
