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
    /// Milliseconds the sender of a request waits for the reply.
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

/// `<prefix>.dlq.<NAME>`: where reliable events that could not be handled go.
pub fn dead_letter_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.dlq.{name}")
}

fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("catga-")
        || lower.starts_with("nats-")
        || lower == "content-type"
        || lower == "traceparent"
        || lower == "tracestate"
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
/// message id, so a conversation is one trace.
pub fn traceparent(msg: &WireMessage) -> String {
    if let Some(tp) = msg.headers.get(header::TRACEPARENT) {
        return tp.to_owned();
    }
    let mut trace = [0u8; 32];
    let mut parent = [0u8; 32];
    let trace = msg.correlation_id.simple().encode_lower(&mut trace);
    let parent = msg.message_id.simple().encode_lower(&mut parent);
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    out.push_str(trace);
    out.push('-');
    out.push_str(&parent[16..]);
    out.push_str("-01");
    out
}

fn uuid_value(id: Uuid) -> HeaderValue {
    let mut buf = [0u8; 36];
    HeaderValue::from(&*id.hyphenated().encode_lower(&mut buf))
}

const MESSAGE_ID: HeaderName = HeaderName::from_static(header::MESSAGE_ID);
const CORRELATION_ID: HeaderName = HeaderName::from_static(header::CORRELATION_ID);
const CAUSATION_ID: HeaderName = HeaderName::from_static(header::CAUSATION_ID);
const TIMEOUT_MS: HeaderName = HeaderName::from_static(header::TIMEOUT_MS);
const HANDLED_BY: HeaderName = HeaderName::from_static(header::HANDLED_BY);
const TRACEPARENT: HeaderName = HeaderName::from_static(header::TRACEPARENT);
const STATUS: HeaderName = HeaderName::from_static(header::STATUS);

/// Headers for an outgoing request or event. Only what differs from the
/// documented defaults is written: the correlation id when it is not the message
/// id, the content type when it is not MessagePack.
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
        h.insert(
            TIMEOUT_MS,
            HeaderValue::from(t.as_millis().max(1).to_string()),
        );
    }
    if let Some(service) = &msg.handled_by {
        h.insert(HANDLED_BY, value(service, header::HANDLED_BY)?);
    }
    h.insert(TRACEPARENT, value(&traceparent(msg), header::TRACEPARENT)?);
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

fn uuid_header(h: Option<&HeaderMap>, name: &str) -> Result<Option<Uuid>> {
    match get(h, name) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<Uuid>()
            .map(Some)
            .map_err(|_| Error::codec(format!("header `{name}` is `{text}`, not a UUID"))),
    }
}

/// Reads an incoming message. `name` comes from the subject and is authoritative.
/// Missing ids are generated; present but malformed headers are errors.
pub(crate) fn from_nats(name: &str, h: Option<&HeaderMap>, payload: Bytes) -> Result<WireMessage> {
    let fail = |e: Error| e.with_message_name(name.to_owned());
    let format = match get(h, header::CONTENT_TYPE) {
        None => Format::MsgPack,
        Some(ct) => Format::from_content_type(ct).ok_or_else(|| {
            fail(Error::codec(format!(
                "content type `{ct}` is not supported; use application/msgpack or application/json"
            )))
        })?,
    };
    let message_id = uuid_header(h, header::MESSAGE_ID)
        .map_err(fail)?
        .unwrap_or_else(catga_core::new_id);
    let correlation_id = uuid_header(h, header::CORRELATION_ID)
        .map_err(fail)?
        .unwrap_or(message_id);
    let causation_id = uuid_header(h, header::CAUSATION_ID).map_err(fail)?;
    let timeout = match get(h, header::TIMEOUT_MS) {
        None => None,
        Some(ms) => Some(Duration::from_millis(ms.trim().parse::<u64>().map_err(
            |_| {
                fail(Error::codec(format!(
                    "header `{}` is `{ms}`, not a number of milliseconds",
                    header::TIMEOUT_MS
                )))
            },
        )?)),
    };
    let mut headers = Headers::new();
    if let Some(h) = h {
        for (k, values) in h.iter() {
            let k: &str = k.as_ref();
            if let Some(v) = values.first() {
                if !is_reserved(k) || k.eq_ignore_ascii_case(header::TRACEPARENT) {
                    headers.insert(k, v.as_str());
                }
            }
        }
    }
    let mut wire = WireMessage {
        name: name.to_owned().into(),
        payload,
        format,
        message_id,
        correlation_id,
        causation_id,
        timeout,
        headers,
        handled_by: get(h, header::HANDLED_BY).map(str::to_owned),
    };
    wire.timeout = wire.timeout.filter(|t| !t.is_zero());
    Ok(wire)
}

/// Headers and payload of a successful reply.
pub(crate) fn reply_ok(reply: WireReply) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(STATUS, "ok");
    if reply.format != Format::MsgPack {
        h.insert(header::CONTENT_TYPE, reply.format.content_type());
    }
    (h, reply.payload)
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

/// Reads a reply: the response on `ok`, the remote error (kind, code, message)
/// on `error`.
pub(crate) fn parse_reply(name: &str, h: Option<&HeaderMap>, payload: Bytes) -> Result<WireReply> {
    match get(h, header::STATUS) {
        Some("ok") => {
            let format = match get(h, header::CONTENT_TYPE) {
                None => Format::MsgPack,
                Some(ct) => Format::from_content_type(ct).ok_or_else(|| {
                    Error::codec(format!("reply to `{name}` has unsupported content type `{ct}`"))
                        .with_message_name(name.to_owned())
                })?,
            };
            Ok(WireReply { payload, format })
        }
        Some("error") => {
            let kind = get(h, header::ERROR_KIND)
                .and_then(ErrorKind::from_wire)
                .unwrap_or(ErrorKind::Handler);
            let message = String::from_utf8_lossy(&payload).into_owned();
            let mut e = Error::new(kind, message).with_message_name(name.to_owned());
            if let Some(code) = get(h, header::ERROR_CODE) {
                e = e.with_code(code.to_owned());
            }
            if let Some(r) = get(h, header::RETRYABLE) {
                e = e.with_retryable(r == "true");
            }
            Err(e)
        }
        other => Err(Error::transport(format!(
            "reply to `{name}` has no valid `{}` header ({other:?}); is the responder a Catga peer?",
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
        let tp = back.headers.get("traceparent").unwrap();
        assert!(
            tp.starts_with(&format!("00-{}-", msg.correlation_id.simple())),
            "{tp}"
        );
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
