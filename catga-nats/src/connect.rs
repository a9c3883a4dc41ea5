//! Connecting to NATS: the client options Catga sets (authentication, TLS,
//! reconnects with full jitter, slow-consumer counting).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use catga_core::backoff::Backoff;
use catga_core::{Error, ErrorKind, Result};

use crate::options::{Auth, NatsOptions};
use crate::shared::transport_error;

/// A client connected as `options` say, and the count of messages it
/// dropped for slow consumers.
pub(crate) async fn client(options: &NatsOptions) -> Result<(Client, Arc<AtomicU64>)> {
    let dropped = Arc::new(AtomicU64::new(0));
    let mut co = match &options.auth {
        Auth::None => ConnectOptions::new(),
        Auth::Token(t) => ConnectOptions::new().token(t.clone()),
        Auth::UserPassword(u, p) => ConnectOptions::new().user_and_password(u.clone(), p.clone()),
        Auth::NKey(seed) => ConnectOptions::new().nkey(seed.clone()),
        Auth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read NATS credentials file {}: {e}", path.display()),
                )
            })?,
    };
    if options.tls.required {
        co = co.require_tls(true);
    }
    if let Some(ca) = &options.tls.root_certificates {
        co = co.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &options.tls.client_certificate {
        co = co.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(name) = &options.name {
        co = co.name(name.clone());
    }
    let backoff = Backoff::new(Duration::from_millis(50), options.max_reconnect_delay);
    let counter = dropped.clone();
    co = co
        .subscription_capacity(options.subscription_capacity)
        .connection_timeout(options.connect_timeout)
        .request_timeout(None)
        // Full jitter, so peers cut off together do not all come back at once.
        .reconnect_delay_callback(move |attempts| {
            backoff
                .cap(attempts.min(32) as u32)
                .mul_f64(fastrand::f64())
        })
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            sid,
                            dropped_total = n,
                            "NATS dropped a message for a slow consumer: raise \
                             subscription_capacity or max_in_flight, or use reliable events"
                        );
                    }
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    let client = co.connect(options.urls.clone()).await.map_err(|e| {
        transport_error(format!(
            "cannot connect to NATS at {:?}: {e}; is nats-server running?",
            options.urls
        ))
    })?;
    Ok((client, dropped))
}
