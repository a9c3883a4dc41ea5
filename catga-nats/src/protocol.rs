//! The wire contract: subjects, queue groups, headers and reply status.
//!
//! `docs/protocol.md` describes the same contract for clients in other languages;
//! keep the two in step.

use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use catga_core::transport::{WireMessage, WireReply};
use catga_core::{Error, ErrorKind, Format, Headers, Result, Uuid};

/// Header names Catga writes and reads.
pub mod header {
    /// Wire name of the message.
    pub const NAME: &str = "Catga-Name";
    /// Message id (UUID, hyphenated).
    pub const MESSAGE_ID: &str = "Catga-Message-Id";
    /// Correlation id (UUID).
    pub const CORRELATION_ID: &str = "Catga-Correlation-Id";
    /// Causation id (UUID), when the message was caused by another.
    pub const CAUSATION_ID: &str = "Catga-Causation-Id";
    /// Payload encoding: `application/msgpack` (default) or `application/json`.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// The absolute deadline of a request (or an event): Unix time in
    /// milliseconds, on the sender's clock. The receiver answers a request that
    /// arrives past it with a timeout error, without running the handler.
    pub const DEADLINE: &str = "Catga-Deadline";
    /// Milliseconds the sender of a request waits for the reply, counted from
    /// receipt. Written by senders before `Catga-Deadline` existed; still read.
    pub const TIMEOUT_MS: &str = "Catga-Timeout-Ms";
    /// For events: the service that already handled the event when publishing.
    pub const HANDLED_BY: &str = "Catga-Handled-By";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Reply status: `ok` or `error`.
    pub const STATUS: &str = "Catga-Status";
    /// Error kind of an `error` reply (see `ErrorKind::as_str`).
    pub const ERROR_KIND: &str = "Catga-Error-Kind";
    /// Application error code of an `error` reply, when there is one.
    pub const ERROR_CODE: &str = "Catga-Error-Code";
    /// `true` or `false`: whether the error is worth retrying.
    pub const RETRYABLE: &str = "Catga-Retryable";
    /// Dead-letter entries: how many times the event was delivered.
    pub const DELIVERIES: &str = "Catga-Deliveries";
    /// Dead-letter entries: the service whose handler failed.
    pub const FAILED_SERVICE: &str = "Catga-Failed-Service";
    /// Dead-letter entries: the error message (one line).
    pub const ERROR_MESSAGE: &str = "Catga-Error-Message";
    /// JetStream de-duplication id (set to the message id).
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    /// On a dead letter: the subject it was taken from (where a replay sends it).
    pub const SUBJECT: &str = "Catga-Subject";
    /// A leader's fence, `<token>:<lock name>` (see `catga_core::Fence`): the
    /// receiver refuses the message when a newer term of that lock has begun.
    pub const FENCE: &str = catga_core::FENCE_HEADER;
}

/// `<prefix>.req.<NAME>`: where requests for NAME are sent.
pub fn request_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.req.{name}")
}

/// `<prefix>.<NAME>`: the queue group of every peer that handles request NAME.
pub fn request_group(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

/// `<prefix>.evt.<NAME>`: where event NAME is published.
pub fn event_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.evt.{name}")
}

/// `<prefix>.rel.<NAME>`: where event NAME is published when its type is
/// reliable: the event stream holds these subjects only, never core events.
pub fn reliable_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.rel.{name}")
}

/// `<prefix>.cmd.<NAME>`: where command NAME is stored when sent durably (a
/// JetStream work queue: each command is taken by one copy of its service).
pub fn command_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.cmd.{name}")
}

/// `<prefix>.dlq.<NAME>`: where reliable events and durable commands that
/// could not be handled go.
pub fn dead_letter_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.dlq.{name}")
}

fn is_reserved(name: &str) -> bool {
    let starts = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    starts("catga-")
        || starts("nats-")
        || ["content-type", "traceparent"]
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r))
}

fn value(text: &str, header: &str) -> Result<HeaderValue> {
    text.parse::<HeaderValue>().map_err(|_| {
        Error::codec(format!(
            "header `{header}` has a value NATS cannot carry (line breaks?)"
        ))
    })
}

/// The W3C `traceparent` of a message: the caller's own when it set one,
/// otherwise trace id = correlation id and parent id = the last 8 bytes of the
/// message id, so a conversation is one trace. Only the caller's own travels;
/// the derived one is computed again by the receiver from the ids.
pub fn traceparent(msg: &WireMessage) -> String {
    match msg.headers.get(header::TRACEPARENT) {
        Some(tp) => tp.to_owned(),
        None => derived_traceparent(msg.correlation_id, msg.message_id),
    }
}

/// Displays a message's `traceparent` (see [`traceparent`]) without building a
/// string unless it is formatted.
pub(crate) struct Traceparent<'a>(pub(crate) &'a WireMessage);

impl std::fmt::Display for Traceparent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&traceparent(self.0))
    }
}

/// `00-<correlation id>-<last 16 hex digits of the message id>-01`.
pub(crate) fn derived_traceparent(correlation_id: Uuid, message_id: Uuid) -> String {
    let mut trace = [0u8; 32];
    let mut parent = [0u8; 32];
    let trace = correlation_id.simple().encode_lower(&mut trace);
    let parent = message_id.simple().encode_lower(&mut parent);
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    out.push_str(trace);
    out.push('-');
    out.push_str(&parent[16..]);
    out.push_str("-01");
    out
}

/// A UUID as a header value, hyphenated, without an intermediate `String`.
pub(crate) fn uuid_value(id: Uuid) -> HeaderValue {
    let mut buf = [0u8; 36];
    HeaderValue::from(&*id.hyphenated().encode_lower(&mut buf))
}

const MESSAGE_ID: HeaderName = HeaderName::from_static(header::MESSAGE_ID);
const CORRELATION_ID: HeaderName = HeaderName::from_static(header::CORRELATION_ID);
const CAUSATION_ID: HeaderName = HeaderName::from_static(header::CAUSATION_ID);
const DEADLINE: HeaderName = HeaderName::from_static(header::DEADLINE);
const HANDLED_BY: HeaderName = HeaderName::from_static(header::HANDLED_BY);
const TRACEPARENT: HeaderName = HeaderName::from_static(header::TRACEPARENT);
const FENCE: HeaderName = HeaderName::from_static(header::FENCE);

/// Headers for an outgoing request or event. Only what differs from the
/// documented defaults is written: the correlation id when it is not the message
/// id, the content type when it is not MessagePack, the `traceparent` when the
/// caller has one (the receiver derives the default from the ids). Every header
/// costs: async-nats stores them in a hash map and parses them on receipt. The
/// deadline is written whenever there is one: it is how a receiver tells work
/// whose caller gave up from work worth doing.
pub(crate) fn to_headers(msg: &WireMessage) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(MESSAGE_ID, uuid_value(msg.message_id));
    if msg.correlation_id != msg.message_id {
        h.insert(CORRELATION_ID, uuid_value(msg.correlation_id));
    }
    if let Some(c) = msg.causation_id {
        h.insert(CAUSATION_ID, uuid_value(c));
    }
    if msg.format != Format::MsgPack {
        h.insert(header::CONTENT_TYPE, msg.format.content_type());
    }
    if let Some(t) = msg.timeout {
        h.insert(DEADLINE, HeaderValue::from(deadline_millis(t).to_string()));
    }
    if let Some(service) = &msg.handled_by {
        h.insert(HANDLED_BY, value(service, header::HANDLED_BY)?);
    }
    if let Some(tp) = msg.headers.get(header::TRACEPARENT) {
        h.insert(TRACEPARENT, value(tp, header::TRACEPARENT)?);
    }
    if let Some(fence) = msg.headers.get(header::FENCE) {
        h.insert(FENCE, value(fence, header::FENCE)?);
    }
    for (name, v) in msg.headers.iter() {
        if is_reserved(name) {
            continue;
        }
        let header_name = name.parse::<HeaderName>().map_err(|_| {
            Error::codec(format!(
                "header name `{name}` cannot travel over NATS: use printable ASCII without `:`"
            ))
        })?;
        h.insert(header_name, value(v, name)?);
    }
    Ok(h)
}

fn get<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// Reads an incoming message. `name` comes from the subject and is authoritative.
/// Missing ids are generated; present but malformed headers are errors. One pass
/// over the headers, no lookups by name (each would parse the name and hash it).
pub(crate) fn from_nats(
    name: &'static str,
    h: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<WireMessage> {
    let mut wire = WireMessage {
        name: name.into(),
        payload,
        format: Format::MsgPack,
        message_id: Uuid::nil(),
        correlation_id: Uuid::nil(),
        causation_id: None,
        timeout: None,
        headers: Headers::new(),
        handled_by: None,
        reliable: false,
    };
    // Collect first, then parse in a fixed order, so the error reported for a
    // message with several malformed headers does not depend on map order.
    let (mut content_type, mut message_id, mut correlation_id) = (None, None, None);
    let (mut causation_id, mut timeout, mut deadline) = (None, None, None);
    for (k, values) in h.into_iter().flat_map(HeaderMap::iter) {
        let Some(v) = values.first().map(HeaderValue::as_str) else {
            continue;
        };
        match canonical(k.as_ref()) {
            header::CONTENT_TYPE => content_type = Some(v),
            header::MESSAGE_ID => message_id = Some(v),
            header::CORRELATION_ID => correlation_id = Some(v),
            header::CAUSATION_ID => causation_id = Some(v),
            header::DEADLINE => deadline = Some(v),
            header::TIMEOUT_MS => timeout = Some(v),
            header::HANDLED_BY => wire.handled_by = Some(v.to_owned()),
            other
                if other.eq_ignore_ascii_case(header::TRACEPARENT)
                    || other.eq_ignore_ascii_case(header::FENCE)
                    || !is_reserved(other) =>
            {
                wire.headers.insert(other, v);
            }
            _ => {}
        }
    }
    let fail = |e: Error| e.with_message_name(name);
    if let Some(ct) = content_type {
        wire.format = Format::from_content_type(ct).ok_or_else(|| {
            fail(Error::codec(format!(
                "content type `{ct}` is not supported; use application/msgpack or \
                 application/json"
            )))
        })?;
    }
    let uuid = |header: &str, text: Option<&str>| {
        text.map(|t| parse_uuid(header, t))
            .transpose()
            .map_err(fail)
    };
    wire.message_id = uuid(header::MESSAGE_ID, message_id)?.unwrap_or_else(catga_core::new_id);
    wire.correlation_id = uuid(header::CORRELATION_ID, correlation_id)?.unwrap_or(wire.message_id);
    wire.causation_id = uuid(header::CAUSATION_ID, causation_id)?;
    let millis = |header: &str, text: &str| {
        text.trim().parse::<u64>().map_err(|_| {
            fail(Error::codec(format!(
                "header `{header}` is `{text}`, not a number of milliseconds"
            )))
        })
    };
    if let Some(ms) = timeout {
        let ms = millis(header::TIMEOUT_MS, ms)?;
        wire.timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(at) = deadline {
        let left = remaining_until(millis(header::DEADLINE, at)?);
        wire.timeout = Some(wire.timeout.map_or(left, |t| t.min(left)));
    }
    Ok(wire)
}

/// Milliseconds since the Unix epoch on this machine's clock.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `Catga-Deadline` of a message sent now that may take `timeout`: rounded
/// up, so a budget under a millisecond is not sent as already past.
pub(crate) fn deadline_millis(timeout: Duration) -> u64 {
    let millis = u64::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
    unix_millis().saturating_add(millis)
}

/// What is left until a `Catga-Deadline` (zero once it passed: the message
/// expired on its way or in this peer's buffer).
pub(crate) fn remaining_until(deadline_millis: u64) -> Duration {
    Duration::from_millis(deadline_millis.saturating_sub(unix_millis()))
}

/// The headers Catga reads by name, in the spelling it writes.
const KNOWN: [&str; 7] = [
    header::CONTENT_TYPE,
    header::DEADLINE,
    header::MESSAGE_ID,
    header::CORRELATION_ID,
    header::CAUSATION_ID,
    header::TIMEOUT_MS,
    header::HANDLED_BY,
];

/// A header name as Catga reads it: names are matched ignoring ASCII case, as
/// NATS users expect (`catga-message-id` is `Catga-Message-Id`); the spelling
/// Catga writes is matched first, without folding.
fn canonical(name: &str) -> &str {
    if KNOWN.contains(&name) {
        return name;
    }
    KNOWN
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or(name)
}

fn parse_uuid(header: &str, text: &str) -> Result<Uuid> {
    text.trim()
        .parse::<Uuid>()
        .map_err(|_| Error::codec(format!("header `{header}` is `{text}`, not a UUID")))
}

/// Headers and payload of a successful reply: no headers at all for a
/// MessagePack response (a reply without `Catga-Status` is a success), only the
/// content type otherwise.
pub(crate) fn reply_ok(reply: WireReply) -> (Option<HeaderMap>, Bytes) {
    let headers = (reply.format != Format::MsgPack).then(|| {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, reply.format.content_type());
        h
    });
    (headers, reply.payload)
}

/// Bytes `headers` take on the wire (`NATS/1.0` line, `name: value` lines, end).
pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(k, vs)| {
            let k: &str = k.as_ref();
            vs.iter()
                .map(|v| k.len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// Headers and payload of an error reply: the payload is the UTF-8 message.
pub(crate) fn reply_err(e: &Error) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(header::STATUS, "error");
    h.insert(header::ERROR_KIND, e.kind().as_str());
    if let Some(code) = e.code() {
        if let Ok(v) = code.parse::<HeaderValue>() {
            h.insert(header::ERROR_CODE, v);
        }
    }
    h.insert(
        header::RETRYABLE,
        if e.is_retryable() { "true" } else { "false" },
    );
    (h, Bytes::from(e.message().to_owned()))
}

/// Reads a reply: the response when `Catga-Status` is absent or `ok`, the remote
/// error (kind, code, message) on `error`.
pub(crate) fn parse_reply(name: &str, h: Option<&HeaderMap>, payload: Bytes) -> Result<WireReply> {
    match get(h, header::STATUS) {
        None | Some("ok") => {
            let format = match get(h, header::CONTENT_TYPE) {
                None => Format::MsgPack,
                Some(ct) => Format::from_content_type(ct).ok_or_else(|| {
                    Error::codec(format!(
                        "reply to `{name}` has unsupported content type `{ct}`"
                    ))
                    .with_message_name(name.to_owned())
                })?,
            };
            Ok(WireReply { payload, format })
        }
        Some("error") => {
            let known = get(h, header::ERROR_KIND).and_then(ErrorKind::from_wire);
            let message = String::from_utf8_lossy(&payload).into_owned();
            let mut e = Error::new(known.unwrap_or(ErrorKind::Handler), message)
                .with_message_name(name.to_owned());
            if let Some(code) = get(h, header::ERROR_CODE) {
                e = e.with_code(code.to_owned());
            } else if known.is_none() {
                // A kind this version does not know (a newer peer's), or
                // none: not taken for the handler's own "no".
                e = e.with_code("catga.unknown_error_kind");
            }
            if let Some(r) = get(h, header::RETRYABLE) {
                e = e.with_retryable(r == "true");
            }
            Err(e)
        }
        Some(other) => Err(Error::transport(format!(
            "reply to `{name}` has `{}: {other}`, expected `ok` or `error`; is the responder a \
             Catga peer?",
            header::STATUS
        ))
        .with_message_name(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catga_core::Metadata;

    #[test]
    fn headers_round_trip() {
        let meta = Metadata::new()
            .with_causation_id(catga_core::new_id())
            .with_header("tenant", "acme")
            .with_timeout(Duration::from_secs(5));
        let mut msg = WireMessage::new("orders.Create", vec![1, 2, 3], Format::Json, &meta);
        msg.handled_by = Some("orders".into());
        let h = to_headers(&msg).unwrap();
        let back = from_nats("orders.Create", Some(&h), msg.payload.clone()).unwrap();
        assert_eq!(back.message_id, msg.message_id);
        assert_eq!(back.correlation_id, msg.correlation_id);
        assert_eq!(back.causation_id, msg.causation_id);
        assert_eq!(back.format, Format::Json);
        assert_eq!(back.handled_by.as_deref(), Some("orders"));
        assert_eq!(back.headers.get("tenant"), Some("acme"));
        assert!(back.timeout.unwrap() <= Duration::from_secs(5));
        // No traceparent of its own: none travels, the receiver derives the same.
        assert!(
            !h.iter()
                .any(|(k, _)| AsRef::<str>::as_ref(k) == "traceparent")
        );
        assert_eq!(back.headers.get("traceparent"), None);
        let tp = traceparent(&back);
        assert_eq!(tp, traceparent(&msg));
        assert!(
            tp.starts_with(&format!("00-{}-", msg.correlation_id.simple())),
            "{tp}"
        );
        assert_eq!(Traceparent(&back).to_string(), tp);
    }

    #[test]
    fn a_request_carries_its_id_and_its_absolute_deadline() {
        let mut msg = WireMessage::new("orders.Create", vec![], Format::MsgPack, &Metadata::new());
        msg.timeout = Some(Duration::from_secs(29));
        let before = unix_millis();
        let h = to_headers(&msg).unwrap();
        let names: Vec<&str> = h.iter().map(|(k, _)| AsRef::<str>::as_ref(k)).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&header::MESSAGE_ID) && names.contains(&header::DEADLINE));
        let at: u64 = get(Some(&h), header::DEADLINE).unwrap().parse().unwrap();
        assert!(
            (before + 29_000..=unix_millis() + 29_000).contains(&at),
            "{at}"
        );
        // Without a deadline, only the id.
        msg.timeout = None;
        let h = to_headers(&msg).unwrap();
        assert_eq!(
            header_bytes(&h),
            "NATS/1.0\r\nCatga-Message-Id: \r\n\r\n".len() + 36
        );
    }

    #[test]
    fn a_deadline_that_passed_on_the_way_arrives_as_zero_time_left() {
        let mut h = HeaderMap::new();
        h.insert(header::DEADLINE, (unix_millis() - 5).to_string().as_str());
        let m = from_nats("x.Y", Some(&h), Bytes::new()).unwrap();
        assert_eq!(m.timeout, Some(Duration::ZERO));
        // What is left counts from the sender's deadline, not from receipt, and
        // an old sender's relative timeout caps it.
        let mut h = HeaderMap::new();
        h.insert(
            header::DEADLINE,
            (unix_millis() + 10_000).to_string().as_str(),
        );
        let left = from_nats("x.Y", Some(&h), Bytes::new())
            .unwrap()
            .timeout
            .unwrap();
        assert!(
            left <= Duration::from_secs(10) && left > Duration::from_secs(8),
            "{left:?}"
        );
        h.insert(header::TIMEOUT_MS, "2000");
        let left = from_nats("x.Y", Some(&h), Bytes::new())
            .unwrap()
            .timeout
            .unwrap();
        assert_eq!(left, Duration::from_secs(2));
        h.insert(header::DEADLINE, "tomorrow");
        let e = from_nats("x.Y", Some(&h), Bytes::new()).unwrap_err();
        assert!(e.to_string().contains("Catga-Deadline"), "{e}");
    }

    #[test]
    fn with_several_malformed_headers_the_first_in_a_fixed_order_is_reported() {
        for _ in 0..20 {
            let mut h = HeaderMap::new();
            h.insert(header::TIMEOUT_MS, "soon");
            h.insert(header::CAUSATION_ID, "x");
            h.insert(header::MESSAGE_ID, "y");
            h.insert(header::CONTENT_TYPE, "text/xml");
            let e = from_nats("x.Y", Some(&h), Bytes::new()).unwrap_err();
            assert!(e.to_string().contains("text/xml"), "{e}");
            assert_eq!(e.message_name(), Some("x.Y"));
        }
    }

    #[test]
    fn a_callers_own_traceparent_travels_as_is() {
        let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let meta = Metadata::new().with_header("traceparent", own);
        let msg = WireMessage::new("orders.Create", vec![], Format::MsgPack, &meta);
        let h = to_headers(&msg).unwrap();
        let back = from_nats("orders.Create", Some(&h), Bytes::new()).unwrap();
        assert_eq!(back.headers.get("traceparent"), Some(own));
        assert_eq!(traceparent(&back), own);
    }

    #[test]
    fn a_msgpack_success_reply_has_no_headers_and_reads_as_ok() {
        let (h, body) = reply_ok(WireReply {
            payload: Bytes::from_static(&[0xc0]),
            format: Format::MsgPack,
        });
        assert!(h.is_none());
        let back = parse_reply("orders.Create", None, body).unwrap();
        assert_eq!(&back.payload[..], &[0xc0]);
        let (h, _) = reply_ok(WireReply {
            payload: Bytes::from_static(b"null"),
            format: Format::Json,
        });
        let back = parse_reply("orders.Create", h.as_ref(), Bytes::new()).unwrap();
        assert_eq!(back.format, Format::Json);
        let mut bad = HeaderMap::new();
        bad.insert(header::STATUS, "maybe");
        let e = parse_reply("orders.Create", Some(&bad), Bytes::new()).unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn bare_messages_get_ids_and_bad_headers_are_errors() {
        let m = from_nats("x.Y", None, Bytes::new()).unwrap();
        assert_eq!(m.correlation_id, m.message_id);
        let mut h = HeaderMap::new();
        h.insert(header::MESSAGE_ID, "not-a-uuid");
        let e = from_nats("x.Y", Some(&h), Bytes::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Codec);
        assert!(e.to_string().contains("Catga-Message-Id"), "{e}");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/xml");
        assert!(from_nats("x.Y", Some(&h), Bytes::new()).is_err());
    }

    #[test]
    fn header_names_are_matched_ignoring_case() {
        let id = Uuid::now_v7();
        let mut h = HeaderMap::new();
        h.insert("catga-message-id", id.to_string().as_str());
        h.insert("CONTENT-TYPE", "application/json");
        h.insert("catga-timeout-ms", "1500");
        let m = from_nats("x.Y", Some(&h), Bytes::new()).unwrap();
        assert_eq!(
            m.message_id, id,
            "idempotency keeps working for such a client"
        );
        assert_eq!(m.format, Format::Json);
        assert_eq!(m.timeout, Some(Duration::from_millis(1500)));
        assert!(
            m.headers.is_empty(),
            "known headers are not passed on as free ones"
        );
    }

    #[test]
    fn error_replies_keep_kind_code_and_retryability() {
        let e = Error::handler("orders.out_of_stock", "no stock").with_retryable(true);
        let (h, body) = reply_err(&e);
        let back = parse_reply("orders.Create", Some(&h), body).unwrap_err();
        assert_eq!(back.kind(), ErrorKind::Handler);
        assert_eq!(back.code(), Some("orders.out_of_stock"));
        assert!(back.is_retryable());
        assert_eq!(back.message(), "no stock");
    }
}

#[cfg(test)]
mod doc_example {
    use catga_core::Format;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct CreateOrder {
        item: String,
        qty: u32,
    }

    /// The bytes shown in docs/protocol.md are what Catga writes and reads.
    #[test]
    fn protocol_doc_example_bytes() {
        let cmd = CreateOrder {
            item: "book".into(),
            qty: 2,
        };
        let bytes = Format::MsgPack.encode(&cmd).unwrap();
        assert_eq!(
            bytes,
            [
                0x82, 0xa4, b'i', b't', b'e', b'm', 0xa4, b'b', b'o', b'o', b'k', 0xa3, b'q', b't',
                b'y', 0x02
            ]
        );
        assert_eq!(
            Format::MsgPack.encode(&2000u64).unwrap(),
            [0xcd, 0x07, 0xd0]
        );
        assert_eq!(Format::MsgPack.encode(&()).unwrap(), [0xc0]);
        let json: CreateOrder = Format::Json.decode(br#"{"item":"book","qty":2}"#).unwrap();
        assert_eq!(json, cmd);
    }
}
