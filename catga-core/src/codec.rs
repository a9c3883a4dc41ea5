//! Payload encodings: MessagePack (default) and JSON.
//!
//! [`Codec`] is the contract a format fulfils; [`Format`] is the runtime choice a
//! mediator is configured with and that travels in the `content-type` header, so a
//! peer decodes a payload with the format it was written in.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Encodes and decodes message payloads.
pub trait Codec {
    /// MIME type written to the `content-type` header.
    const CONTENT_TYPE: &'static str;
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a `T` from `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// MessagePack through rmp-serde, structs as maps with field names, so fields can
/// be added and reordered without breaking older peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

impl Codec for MsgPack {
    const CONTENT_TYPE: &'static str = "application/msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value).map_err(|e| {
            Error::codec(format!("could not encode as MessagePack: {e}")).with_source(e)
        })
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
        serde_json::to_vec(value)
            .map_err(|e| Error::codec(format!("could not encode as JSON: {e}")).with_source(e))
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

    /// Decodes a `T` in this format.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Format::MsgPack => MsgPack::decode(bytes),
            Format::Json => Json::decode(bytes),
        }
    }
}
