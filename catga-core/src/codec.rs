//! Payload encodings: MessagePack (default) and JSON.
//!
//! [`Codec`] is the contract a format fulfils; [`Format`] is the runtime choice a
//! mediator is configured with and that travels in the `content-type` header, so a
//! peer decodes a payload with the format it was written in.

use std::cell::RefCell;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A stable 64-bit fingerprint of an encoded payload (FNV-1a): the same
/// bytes give the same value on every peer and version. Idempotency stores
/// it with an outcome (a duplicate with other bytes is refused), and a
/// transport may use it to tell a re-sent message from another one that
/// reuses its id.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Encodes and decodes message payloads.
pub trait Codec {
    /// MIME type written to the `content-type` header.
    const CONTENT_TYPE: &'static str;
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a `T` from `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// Bytes reserved before encoding: most messages fit, so the buffer is not
/// grown (and copied) several times from empty.
const INITIAL_CAPACITY: usize = 128;

/// What a thread's scratch buffer starts with (and goes back to).
const SCRATCH_START: usize = 1024;

/// Scratch buffers above this size are not kept for the next message.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Where [`Format::encode_bytes`] encodes before copying out the exact bytes.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_START));
}

fn msgpack_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    rmp_serde::encode::write_named(out, value)
        .map_err(|e| Error::codec(format!("could not encode as MessagePack: {e}")).with_source(e))
}

fn json_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    serde_json::to_writer(out, value)
        .map_err(|e| Error::codec(format!("could not encode as JSON: {e}")).with_source(e))
}

/// MessagePack through rmp-serde, structs as maps with field names, so fields can
/// be added and reordered without breaking older peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

impl Codec for MsgPack {
    const CONTENT_TYPE: &'static str = "application/msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(INITIAL_CAPACITY);
        msgpack_into(&mut out, value)?;
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        rmp_serde::from_slice(bytes).map_err(|e| {
            Error::codec(format!(
                "could not decode {} from MessagePack ({} bytes): {e}",
                std::any::type_name::<T>(),
                bytes.len()
            ))
            .with_source(e)
        })
    }
}

/// JSON through serde_json: readable on the wire, larger and slower.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const CONTENT_TYPE: &'static str = "application/json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(INITIAL_CAPACITY);
        json_into(&mut out, value)?;
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::codec(format!(
                "could not decode {} from JSON ({} bytes): {e}",
                std::any::type_name::<T>(),
                bytes.len()
            ))
            .with_source(e)
        })
    }
}

/// The payload format a mediator writes; incoming payloads are read in the format
/// their `content-type` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// [`MsgPack`], the default.
    #[default]
    MsgPack,
    /// [`Json`].
    Json,
}

impl Format {
    /// MIME type of the format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::MsgPack => MsgPack::CONTENT_TYPE,
            Format::Json => Json::CONTENT_TYPE,
        }
    }

    /// The format a `content-type` names; `None` for anything else.
    pub fn from_content_type(ct: &str) -> Option<Format> {
        match ct.trim() {
            "application/msgpack" | "application/x-msgpack" => Some(Format::MsgPack),
            "application/json" => Some(Format::Json),
            _ => None,
        }
    }

    /// Encodes `value` in this format.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Format::MsgPack => MsgPack::encode(value),
            Format::Json => Json::encode(value),
        }
    }

    /// Encodes `value` into shared bytes, as the transports send them: through a
    /// per-thread scratch buffer, so the only allocation is the exact-size copy.
    pub fn encode_bytes<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        SCRATCH.with(|scratch| {
            // A `Serialize` impl that itself encodes finds the buffer in use.
            let Ok(mut buf) = scratch.try_borrow_mut() else {
                return self.encode(value).map(Bytes::from);
            };
            buf.clear();
            let encoded = match self {
                Format::MsgPack => msgpack_into(&mut buf, value),
                Format::Json => json_into(&mut buf, value),
            };
            let out = encoded.map(|()| Bytes::copy_from_slice(&buf));
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::with_capacity(SCRATCH_START);
            }
            out
        })
    }

    /// Decodes a `T` in this format.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Format::MsgPack => MsgPack::decode(bytes),
            Format::Json => Json::decode(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes another value while being encoded, as a hand-written `Serialize`
    /// that embeds a pre-encoded payload might.
    struct Nested(u32);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let inner = Format::MsgPack
                .encode_bytes(&self.0)
                .map_err(serde::ser::Error::custom)?;
            s.serialize_bytes(&inner)
        }
    }

    #[test]
    fn encode_bytes_matches_encode_in_both_formats_and_survives_nesting() {
        let value = ("book", 2u32, vec![1u8; 300]);
        for format in [Format::MsgPack, Format::Json] {
            let bytes = format.encode_bytes(&value).unwrap();
            assert_eq!(&bytes[..], &format.encode(&value).unwrap()[..]);
            let back: (String, u32, Vec<u8>) = format.decode(&bytes).unwrap();
            assert_eq!(back.2.len(), 300);
        }
        let nested = Format::MsgPack.encode_bytes(&Nested(7)).unwrap();
        let inner: serde_bytes_like::Bytes = Format::MsgPack.decode(&nested).unwrap();
        assert_eq!(Format::MsgPack.decode::<u32>(&inner.0).unwrap(), 7);
        // A large message does not leave a large buffer behind, nor break the next.
        let big = vec![7u8; SCRATCH_KEEP * 2];
        assert_eq!(
            Format::MsgPack.encode_bytes(&big).unwrap().len(),
            Format::MsgPack.encode(&big).unwrap().len()
        );
        SCRATCH.with(|s| assert!(s.borrow().capacity() <= SCRATCH_KEEP));
        assert_eq!(&Format::Json.encode_bytes(&1u8).unwrap()[..], b"1");
    }

    mod serde_bytes_like {
        /// Reads MessagePack `bin` (what `serialize_bytes` writes).
        pub(super) struct Bytes(pub(super) Vec<u8>);

        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}
