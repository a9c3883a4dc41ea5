//! The NATS service API (ADR-32): every serving peer answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (each also with `.<service>` and
//! `.<service>.<id>`), so `nats micro ls`, `info` and `stats` list Catga
//! services, their endpoints (the message names a peer serves, with subject
//! and queue group) and per-endpoint counts, beside services written with any
//! NATS client.
//!
//! The service name is the Catga service name (characters outside
//! `[A-Za-z0-9_-]` become `_`), the id this peer's id, the version
//! [`NatsOptions::service_version`](crate::NatsOptions::service_version).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::select_all;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::admission::Gauge;
use crate::shared::{Shared, transport_error};

/// One message name a peer serves, as the service API shows it.
pub(crate) struct Endpoint {
    /// The message name.
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) subject: String,
    pub(crate) queue_group: String,
    /// Its in-flight gauge and handling counts.
    pub(crate) gauge: Arc<Gauge>,
}

/// How an endpoint is served.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Requests, by request/reply on a queue group.
    Request,
    /// Core events, on a queue group per service.
    Event,
    /// Durable commands, from their JetStream work queue.
    DurableCommand,
    /// Reliable events, from their JetStream consumer.
    ReliableEvent,
}

impl Kind {
    /// As the endpoint's `catga.kind` metadata shows it.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Event => "event",
            Kind::DurableCommand => "durable command",
            Kind::ReliableEvent => "reliable event",
        }
    }

    /// After the message name in the endpoint's name: a stored queue is an
    /// endpoint of its own (a durable command is also served by
    /// request/reply, under the plain name).
    fn suffix(self) -> &'static str {
        match self {
            Kind::Request | Kind::Event => "",
            Kind::DurableCommand => "_durable",
            Kind::ReliableEvent => "_reliable",
        }
    }
}

impl Endpoint {
    /// Its name in the service API: the message name made a valid endpoint
    /// name, then the kind's suffix.
    fn api_name(&self) -> String {
        api_name(self.name) + self.kind.suffix()
    }
}

/// Who answers.
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) started: String,
}

impl Identity {
    pub(crate) fn new(service: &str, id: uuid::Uuid, version: &str) -> Identity {
        Identity {
            name: api_name(service),
            id: id.simple().to_string(),
            version: version.to_owned(),
            started: rfc3339(SystemTime::now()),
        }
    }
}

/// A name as the service API allows it: `[A-Za-z0-9_-]+`.
fn api_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".to_owned() } else { s }
}

/// Subscribes to the service API's subjects for this peer and answers them
/// until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    identity: Identity,
    endpoints: Vec<Endpoint>,
    shutdown: CancellationToken,
) -> catga_core::Result<impl Future<Output = ()> + Send + 'static> {
    let mut subs = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{}", identity.name),
            format!("$SRV.{verb}.{}.{}", identity.name, identity.id),
        ] {
            let sub = shared
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| transport_error(format!("cannot subscribe to `{subject}`: {e}")))?;
            subs.push(sub);
        }
    }
    let mut requests = select_all(subs);
    Ok(async move {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return,
                msg = requests.next() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            let Some(reply) = msg.reply else { continue };
            let verb = msg.subject.split('.').nth(1).unwrap_or("");
            let body = answer(verb, &identity, &endpoints);
            if let Err(e) = shared.client.publish(reply, body.to_string().into()).await {
                tracing::debug!(error = %e, "could not answer a service API request");
            }
        }
    })
}

/// The JSON answer to `$SRV.<verb>`.
fn answer(verb: &str, me: &Identity, endpoints: &[Endpoint]) -> Value {
    let mut body = json!({
        "name": me.name,
        "id": me.id,
        "version": me.version,
        "metadata": {},
    });
    match verb {
        "INFO" => {
            body["type"] = "io.nats.micro.v1.info_response".into();
            body["description"] = format!("Catga service {}", me.name).into();
            body["endpoints"] = endpoints
                .iter()
                .map(|e| {
                    json!({
                        "name": e.api_name(),
                        "subject": e.subject,
                        "queue_group": e.queue_group,
                        "metadata": {"catga.message": e.name, "catga.kind": e.kind.as_str()},
                    })
                })
                .collect();
        }
        "STATS" => {
            body["type"] = "io.nats.micro.v1.stats_response".into();
            body["started"] = me.started.clone().into();
            body["endpoints"] = endpoints
                .iter()
                .map(|e| {
                    let g = &e.gauge;
                    let handled = g.handled.load(Ordering::Relaxed);
                    let busy = g.busy_nanos.load(Ordering::Relaxed);
                    let last_error = g
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    json!({
                        "name": e.api_name(),
                        "subject": e.subject,
                        "queue_group": e.queue_group,
                        "num_requests": handled,
                        "num_errors": g.errors.load(Ordering::Relaxed),
                        "last_error": last_error,
                        "processing_time": busy,
                        "average_processing_time": busy.checked_div(handled).unwrap_or(0),
                        "data": {"in_flight": g.messages(), "in_flight_bytes": g.bytes()},
                    })
                })
                .collect();
        }
        _ => body["type"] = "io.nats.micro.v1.ping_response".into(),
    }
    body
}

/// `t` as RFC 3339 in UTC, e.g. `2026-11-30T02:40:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_998_123_456);
        assert_eq!(rfc3339(t), "2026-11-30T00:22:03.456Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn names_are_made_fit_for_the_service_api() {
        assert_eq!(api_name("orders"), "orders");
        assert_eq!(api_name("orders.CreateOrder"), "orders_CreateOrder");
        assert_eq!(api_name(""), "_");
    }
}
