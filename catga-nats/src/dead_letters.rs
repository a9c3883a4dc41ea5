//! [`DeadLetters`]: list, show, replay and purge the JetStream dead letters
//! (reliable events and durable commands that could not be handled).

use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use catga_core::{Error, ErrorKind, Result};

use crate::options::NatsOptions;
use crate::protocol::header;
use crate::shared::transport_error;

/// One dead letter: where it came from and why it failed.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `show`, `replay` and
    /// `purge` take).
    pub sequence: u64,
    /// The message's wire name.
    pub name: String,
    /// The subject it was taken from (`<prefix>.rel.<NAME>` or
    /// `<prefix>.cmd.<NAME>`): where a replay sends it again.
    pub subject: Option<String>,
    /// The error kind of the last failure (`validation`, `handler`, ...).
    pub error_kind: Option<String>,
    /// The error's message.
    pub error_message: Option<String>,
    /// Deliveries before it was given up on.
    pub deliveries: Option<u32>,
    /// The consumer (service) that failed it.
    pub failed_service: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    /// Its headers, as stored.
    pub headers: HeaderMap,
    /// The encoded message.
    pub payload: Bytes,
}

/// The dead-letter stream of a deployment (`<PREFIX>_DLQ`), for operators:
/// what failed, why, and sending it again once the cause is fixed.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
/// use catga_nats::{DeadLetters, NatsOptions};
/// let dlq = DeadLetters::connect(NatsOptions::new(["nats://127.0.0.1:4222"])).await?;
/// for letter in dlq.list(100).await? {
///     println!("{} {} {:?}", letter.sequence, letter.name, letter.error_message);
///     dlq.replay(letter.sequence).await?; // back to where it came from
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    stream: String,
}

impl DeadLetters {
    /// Connects as `options` say.
    pub async fn connect(options: NatsOptions) -> Result<DeadLetters> {
        let (client, _) = crate::connect::client(&options).await?;
        Ok(DeadLetters::from_client(client, &options))
    }

    /// Over a client the application already has.
    pub fn from_client(client: Client, options: &NatsOptions) -> DeadLetters {
        DeadLetters {
            js: jetstream::new(client),
            stream: options.dead_letter_stream_name(),
        }
    }

    async fn stream(&self) -> Result<stream::Stream> {
        self.js.get_stream(&self.stream).await.map_err(|e| {
            transport_error(format!(
                "cannot open the dead-letter stream `{}`: {e}",
                self.stream
            ))
        })
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut stream = self.stream().await?;
        let state = stream
            .info()
            .await
            .map_err(|e| transport_error(format!("cannot read `{}`: {e}", self.stream)))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            if out.len() >= limit {
                break;
            }
            // A sequence purged or replayed on its own leaves a gap.
            if let Ok(message) = stream.get_raw_message(sequence).await {
                out.push(letter(message));
            }
        }
        Ok(out)
    }

    /// Dead letter `sequence`.
    pub async fn show(&self, sequence: u64) -> Result<DeadLetter> {
        self.stream()
            .await?
            .get_raw_message(sequence)
            .await
            .map(letter)
            .map_err(|e| not_found(sequence, &e))
    }

    /// Sends dead letter `sequence` again to the subject it came from (its
    /// handlers take it as new, with its message id, so their idempotency
    /// still recognises an effect that did happen), then removes it.
    pub async fn replay(&self, sequence: u64) -> Result<()> {
        let letter = self.show(sequence).await?;
        let subject = letter.subject.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Validation,
                format!(
                    "dead letter {sequence} does not say where it came from (no `{}` header: \
                     dead-lettered by an older version); publish it by hand",
                    header::SUBJECT
                ),
            )
        })?;
        let mut headers = HeaderMap::new();
        for (name, values) in letter.headers.iter() {
            let n: &str = name.as_ref();
            let dead_letter_only = [
                header::NAME,
                header::ERROR_KIND,
                header::ERROR_CODE,
                header::ERROR_MESSAGE,
                header::DELIVERIES,
                header::FAILED_SERVICE,
                header::SUBJECT,
                header::NATS_MSG_ID,
            ]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(n));
            if !dead_letter_only {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        // A new stream-level id: the original may still be in the duplicate
        // window and would be dropped as a duplicate.
        headers.insert(
            header::NATS_MSG_ID,
            format!("replay-{}", catga_core::new_id()).as_str(),
        );
        self.js
            .publish_with_headers(subject.clone(), headers, letter.payload)
            .await
            .map_err(|e| transport_error(format!("replay to `{subject}`: {e}")))?
            .await
            .map_err(|e| transport_error(format!("replay to `{subject}` not stored: {e}")))?;
        self.purge(sequence).await
    }

    /// Removes dead letter `sequence`.
    pub async fn purge(&self, sequence: u64) -> Result<()> {
        match self.stream().await?.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(e) => Err(not_found(sequence, &e)),
        }
    }

    /// Removes every dead letter; returns how many there were.
    pub async fn purge_all(&self) -> Result<u64> {
        self.stream()
            .await?
            .purge()
            .await
            .map(|p| p.purged)
            .map_err(|e| transport_error(format!("cannot purge `{}`: {e}", self.stream)))
    }
}

fn not_found(sequence: u64, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Validation,
        format!("no dead letter {sequence}: {e}"),
    )
}

fn letter(m: jetstream::message::StreamMessage) -> DeadLetter {
    let get = |h: &str| m.headers.get(h).map(|v| v.as_str().to_owned());
    let name = get(header::NAME).unwrap_or_else(|| {
        m.subject
            .as_str()
            .split_once(".dlq.")
            .map_or_else(|| m.subject.to_string(), |(_, n)| n.to_owned())
    });
    DeadLetter {
        sequence: m.sequence,
        subject: get(header::SUBJECT),
        error_kind: get(header::ERROR_KIND),
        error_message: get(header::ERROR_MESSAGE),
        deliveries: get(header::DELIVERIES).and_then(|d| d.parse().ok()),
        failed_service: get(header::FAILED_SERVICE),
        time: m.time.to_string(),
        name,
        headers: m.headers,
        payload: m.payload,
    }
}
