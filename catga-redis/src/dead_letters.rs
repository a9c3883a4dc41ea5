//! The outbox dead letters, for operators: list, show, replay and purge
//! entries the relay could not publish, and see the relays at work.

use catga_core::{Error, ErrorKind, Result};
use redis::AsyncCommands;
use redis::streams::{StreamId, StreamInfoConsumersReply, StreamRangeReply};

use crate::conn::store_error;
use crate::store::RedisStore;

/// A dead-lettered outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxDeadLetter {
    /// `<shard>/<stream id>`: what `show`, `replay` and `purge` take.
    pub id: String,
    /// The message's wire name, when the entry has one.
    pub name: Option<String>,
    /// The message id, when the entry has one.
    pub message_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// The id the entry had in the outbox.
    pub entry_id: Option<String>,
}

/// A relay's consumer of one outbox shard.
#[derive(Debug, Clone)]
pub struct RelayConsumer {
    /// The shard.
    pub shard: u32,
    /// `<service>-<peer id>`.
    pub name: String,
    /// Entries it took and has not acknowledged.
    pub pending: usize,
    /// Milliseconds since it last read.
    pub idle_ms: u64,
}

impl RedisStore {
    /// Up to `limit` outbox dead letters, shard by shard, oldest first.
    pub async fn outbox_dead_letters(&self, limit: usize) -> Result<Vec<OutboxDeadLetter>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for shard in 0..self.keys.shards() {
            if out.len() >= limit {
                break;
            }
            let reply: StreamRangeReply = conn
                .xrange_count(
                    self.keys.dead_letters(shard),
                    "-",
                    "+",
                    (limit - out.len()).min(1_000_000),
                )
                .await
                .map_err(|e| store_error("XRANGE of the dead-letter stream", e))?;
            out.extend(reply.ids.iter().map(|sid| dead_letter(shard, sid)));
        }
        Ok(out)
    }

    /// Outbox dead letter `id` (`<shard>/<stream id>`).
    pub async fn outbox_dead_letter(&self, id: &str) -> Result<OutboxDeadLetter> {
        let (shard, sid) = split(id)?;
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = conn
            .xrange(self.keys.dead_letters(shard), sid, sid)
            .await
            .map_err(|e| store_error("XRANGE of the dead-letter stream", e))?;
        reply
            .ids
            .first()
            .map(|e| dead_letter(shard, e))
            .ok_or_else(|| no_such(id))
    }

    /// Moves outbox dead letter `id` back to its outbox, as it was stored:
    /// the relay publishes it again (consumers' idempotency still knows its
    /// message id). One atomic step.
    pub async fn replay_outbox_dead_letter(&self, id: &str) -> Result<()> {
        let (shard, sid) = split(id)?;
        let mut conn = self.conn.clone();
        let moved: i64 = self
            .scripts
            .replay_dead_letter
            .key(self.keys.dead_letters(shard))
            .key(self.keys.outbox(shard))
            .arg(sid)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error("replaying an outbox dead letter", e))?;
        if moved == 1 { Ok(()) } else { Err(no_such(id)) }
    }

    /// Removes outbox dead letter `id`.
    pub async fn purge_outbox_dead_letter(&self, id: &str) -> Result<()> {
        let (shard, sid) = split(id)?;
        let mut conn = self.conn.clone();
        let n: usize = conn
            .xdel(self.keys.dead_letters(shard), &[sid])
            .await
            .map_err(|e| store_error("XDEL of an outbox dead letter", e))?;
        if n == 1 { Ok(()) } else { Err(no_such(id)) }
    }

    /// Removes every outbox dead letter; returns how many there were.
    pub async fn purge_outbox_dead_letters(&self) -> Result<usize> {
        let n = self.dead_letter_count().await?;
        let mut conn = self.conn.clone();
        for shard in 0..self.keys.shards() {
            let _: i64 = conn
                .del(self.keys.dead_letters(shard))
                .await
                .map_err(|e| store_error("DEL of a dead-letter stream", e))?;
        }
        Ok(n)
    }

    /// The relays reading the outbox: one consumer per (shard, peer).
    pub async fn relay_consumers(&self) -> Result<Vec<RelayConsumer>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for shard in 0..self.keys.shards() {
            let reply: redis::RedisResult<StreamInfoConsumersReply> = conn
                .xinfo_consumers(self.keys.outbox(shard), self.keys.group())
                .await;
            // No group yet (no relay ever ran on this shard): no consumers.
            let Ok(reply) = reply else { continue };
            out.extend(reply.consumers.into_iter().map(|c| RelayConsumer {
                shard,
                name: c.name,
                pending: c.pending,
                idle_ms: u64::try_from(c.idle).unwrap_or(0),
            }));
        }
        Ok(out)
    }
}

fn dead_letter(shard: u32, sid: &StreamId) -> OutboxDeadLetter {
    let text = |name: &str| sid.get::<String>(name);
    OutboxDeadLetter {
        id: format!("{shard}/{}", sid.id),
        name: text("name"),
        message_id: text("message_id"),
        reason: text("reason"),
        entry_id: text("entry_id"),
    }
}

fn split(id: &str) -> Result<(u32, &str)> {
    id.split_once('/')
        .and_then(|(shard, sid)| Some((shard.parse().ok()?, sid)))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Validation,
                format!("`{id}` is not an outbox dead-letter id (`<shard>/<stream id>`)"),
            )
        })
}

fn no_such(id: &str) -> Error {
    Error::new(
        ErrorKind::Validation,
        format!("no outbox dead letter `{id}`"),
    )
}
