//! NATS over TLS against a real nats-server that requires it, with a CA made
//! by the test.

use catga_core::{Catga, ErrorKind};
use catga_nats::{NatsOptions, NatsTransport, Tls};
use catga_test_support::{NatsServer, TestCa};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_travel_over_tls_and_an_untrusted_server_is_refused() {
    let ca = TestCa::generate();
    let server = NatsServer::start_tls(&ca.server_cert(), &ca.server_key());
    let trusting = || {
        NatsOptions::new([server.url()]).tls(Tls {
            required: true,
            root_certificates: Some(ca.ca()),
            ..Tls::default()
        })
    };
    let _peer = Catga::builder()
        .service("calc")
        .transport(NatsTransport::connect(trusting()).await.unwrap())
        .request_fn(|a: Add, _| async move { Ok(a.a + a.b) })
        .start()
        .await
        .unwrap();
    let caller = Catga::builder()
        .transport(NatsTransport::connect(trusting()).await.unwrap())
        .build()
        .unwrap();
    assert_eq!(caller.send(Add { a: 40, b: 2 }).await.unwrap(), 42);

    // Without the CA, the server's certificate is not trusted: a clear
    // connection error, not a hang.
    let tls = Tls {
        required: true,
        ..Tls::default()
    };
    let e = NatsTransport::connect(
        NatsOptions::new([server.url()])
            .tls(tls)
            .max_reconnect_delay(std::time::Duration::from_millis(100)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("cannot connect to NATS"), "{e}");
}
