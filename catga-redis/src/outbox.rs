//! The outbox on Redis: one stream per shard, a consumer group every relay
//! joins, reclaiming of entries a dead relay held, dead letters, and pruning of
//! dead relays' consumers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use catga_core::store::{OutboxEntry, OutboxRecord, OutboxStore};
use catga_core::{Error, Result, Uuid};
use futures_util::future::BoxFuture;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, ScriptInvocation, Value};

use crate::conn::store_error;
use crate::store::{RedisStore, ms};

impl RedisStore {
    /// Entries in the outbox dead-letter streams.
    pub async fn dead_letter_count(&self) -> Result<usize> {
        let mut conn = self.conn.clone();
        let mut n = 0;
        for shard in 0..self.keys.shards() {
            let len: usize = conn
                .xlen(self.keys.dead_letters(shard))
                .await
                .map_err(|e| store_error("XLEN of the dead-letter stream", e))?;
            n += len;
        }
        Ok(n)
    }

    /// Moves entry `sid` of shard `shard` to its dead-letter stream as it is
    /// stored (it need not decode), with `reason`.
    async fn dead_letter_raw(&self, shard: u32, sid: &str, reason: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .dead_letter
            .key(self.keys.outbox(shard))
            .key(self.keys.dead_letters(shard))
            .arg(self.keys.group())
            .arg(sid)
            .arg(reason)
            .arg(self.dead_letters_max)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error("dead-lettering an outbox entry", e))?;
        Ok(())
    }

    /// Decodes a claimed entry; one that does not decode is dead-lettered on
    /// the spot (`None`), alone, so it never blocks the entries behind it.
    async fn decode_or_dead_letter(
        &self,
        shard: u32,
        stream: &str,
        sid: StreamId,
        deliveries: u32,
    ) -> Result<Option<OutboxEntry>> {
        let id = sid.id.clone();
        match decode_entry(shard, stream, sid, deliveries) {
            Ok(entry) => Ok(Some(entry)),
            Err(e) => {
                tracing::error!(%stream, entry = %id, error = %e, "corrupt outbox entry dead-lettered");
                self.dead_letter_raw(shard, &id, e.message()).await?;
                Ok(None)
            }
        }
    }

    async fn ensure_group(&self, shard: u32) -> Result<()> {
        if self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&shard)
        {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(self.keys.outbox(shard), self.keys.group(), "0")
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(store_error("creating the outbox consumer group", e)),
        }
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard);
        Ok(())
    }

    fn forget_group(&self, shard: u32, e: &redis::RedisError) {
        if e.code() == Some("NOGROUP") {
            self.groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&shard);
        }
    }

    /// Whether it is time to look for relay consumers of dead peers: at most
    /// once per ten idle times.
    /// Whether it is time to reclaim entries a dead relay left: at most every
    /// quarter of the idle time (nothing can be reclaimed sooner than that
    /// anyway), so an idle relay asks Redis one command per shard per round.
    fn reclaim_due(&self, min_idle: Duration) -> bool {
        let mut last = self.reclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let due = last.is_none_or(|at| now.duration_since(at) >= min_idle / 4);
        if due {
            *last = Some(now);
        }
        due
    }

    fn prune_due(&self, min_idle: Duration) -> bool {
        let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let due = last.is_none_or(|at| now.duration_since(at) >= min_idle * 10);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Removes the consumers of peers that stopped relaying: idle for ten idle
    /// times with nothing pending (what they held was reclaimed first). Every
    /// peer that ever started leaves a consumer behind; without this, the group
    /// grows with every restart. Checked and removed in one script, so a relay
    /// that wakes up in between keeps what it reads.
    async fn prune_consumers(&self, shard: u32, me: &str, min_idle: Duration) -> Result<()> {
        let stream = self.keys.outbox(shard);
        let mut conn = self.conn.clone();
        let removed: Vec<String> = self
            .scripts
            .prune_consumers
            .key(&stream)
            .arg(self.keys.group())
            .arg(me)
            .arg(ms(min_idle).saturating_mul(10))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error("removing stale outbox consumers", e))?;
        for consumer in removed {
            tracing::debug!(%consumer, shard, "removed the relay consumer of a dead peer");
        }
        Ok(())
    }

    async fn claim_shard(
        &self,
        shard: u32,
        consumer: &str,
        max: usize,
        min_idle: Duration,
        reclaim: bool,
        out: &mut Vec<OutboxEntry>,
    ) -> Result<()> {
        if reclaim {
            self.ensure_group(shard).await?;
            let (stream, group) = (self.keys.outbox(shard), self.keys.group());
            self.reclaim_shard(shard, &stream, &group, consumer, max, min_idle, out)
                .await?;
        }
        let room = max.saturating_sub(out.len());
        if room == 0 {
            return Ok(());
        }
        self.read_new(&[shard], consumer, room, out).await
    }

    /// Reads new entries of `shards` in one `XREADGROUP`, at most `max` per
    /// stream. Several shards in one read only on a single node (on a
    /// cluster the streams live in different slots): a burst may then
    /// return more than `max` in all, and the relay handles what it gets.
    async fn read_new(
        &self,
        shards: &[u32],
        consumer: &str,
        max: usize,
        out: &mut Vec<OutboxEntry>,
    ) -> Result<()> {
        for &shard in shards {
            self.ensure_group(shard).await?;
        }
        let streams: Vec<String> = shards.iter().map(|&s| self.keys.outbox(s)).collect();
        let ids = vec![">"; streams.len()];
        let mut conn = self.conn.clone();
        let fresh: Option<StreamReadReply> = conn
            .xread_options(
                &streams,
                &ids,
                &StreamReadOptions::default()
                    .group(self.keys.group(), consumer)
                    .count(max),
            )
            .await
            .map_err(|e| {
                for &shard in shards {
                    self.forget_group(shard, &e);
                }
                store_error("XREADGROUP on the outbox", e)
            })?;
        for key in fresh.map(|r| r.keys).unwrap_or_default() {
            let Some(i) = streams.iter().position(|s| *s == key.key) else {
                continue;
            };
            for sid in key.ids {
                out.extend(
                    self.decode_or_dead_letter(shards[i], &streams[i], sid, 1)
                        .await?,
                );
            }
        }
        Ok(())
    }

    /// Takes over the entries of `shard` another relay left unacknowledged
    /// for `min_idle`.
    #[allow(clippy::too_many_arguments)]
    async fn reclaim_shard(
        &self,
        shard: u32,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        min_idle: Duration,
        out: &mut Vec<OutboxEntry>,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let reclaimed: StreamAutoClaimReply = conn
            .xautoclaim_options(
                stream,
                group,
                consumer,
                ms(min_idle),
                "0-0",
                StreamAutoClaimOptions::default().count(max),
            )
            .await
            .map_err(|e| {
                self.forget_group(shard, &e);
                store_error("XAUTOCLAIM on the outbox", e)
            })?;
        if !reclaimed.deleted_ids.is_empty() {
            let _: redis::RedisResult<usize> =
                conn.xack(stream, group, &reclaimed.deleted_ids).await;
        }
        for sid in reclaimed.claimed {
            let pending: StreamPendingCountReply = conn
                .xpending_count(stream, group, &sid.id, &sid.id, 1)
                .await
                .map_err(|e| store_error("XPENDING on the outbox", e))?;
            let deliveries = pending
                .ids
                .first()
                .map_or(2, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX));
            out.extend(
                self.decode_or_dead_letter(shard, stream, sid, deliveries)
                    .await?,
            );
        }
        Ok(())
    }
}

/// Adds an event's seven fields to a script invocation (see `lua/complete.lua`).
pub(crate) fn push_event(inv: &mut ScriptInvocation<'_>, record: &OutboxRecord) -> Result<()> {
    let headers = rmp_serde::to_vec(&record.headers)
        .map_err(|e| Error::codec(format!("cannot encode outbox headers: {e}")))?;
    inv.arg(&record.name)
        .arg(&record.payload[..])
        .arg(&record.content_type)
        .arg(record.message_id.to_string())
        .arg(record.correlation_id.to_string())
        .arg(
            record
                .causation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
        )
        .arg(headers);
    Ok(())
}

fn field<'a>(sid: &'a StreamId, stream: &str, name: &str) -> Result<&'a [u8]> {
    match sid.map.get(name) {
        Some(Value::BulkString(b)) => Ok(b),
        Some(Value::SimpleString(s)) => Ok(s.as_bytes()),
        _ => Err(corrupt(
            stream,
            &sid.id,
            &format!("field `{name}` is missing"),
        )),
    }
}

fn corrupt(stream: &str, id: &str, what: &str) -> Error {
    Error::store(format!(
        "outbox entry {id} in `{stream}` is corrupt: {what}"
    ))
    .with_retryable(false)
}

fn text(sid: &StreamId, stream: &str, name: &str) -> Result<String> {
    String::from_utf8(field(sid, stream, name)?.to_vec())
        .map_err(|_| corrupt(stream, &sid.id, &format!("field `{name}` is not UTF-8")))
}

fn uuid(sid: &StreamId, stream: &str, name: &str) -> Result<Option<Uuid>> {
    let t = text(sid, stream, name)?;
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| corrupt(stream, &sid.id, &format!("field `{name}` is not a UUID")))
}

fn decode_entry(shard: u32, stream: &str, sid: StreamId, deliveries: u32) -> Result<OutboxEntry> {
    let headers: Vec<(String, String)> = rmp_serde::from_slice(field(&sid, stream, "headers")?)
        .map_err(|_| corrupt(stream, &sid.id, "headers are not MessagePack"))?;
    let message_id = uuid(&sid, stream, "message_id")?
        .ok_or_else(|| corrupt(stream, &sid.id, "no message id"))?;
    let record = OutboxRecord {
        name: text(&sid, stream, "name")?,
        payload: Bytes::copy_from_slice(field(&sid, stream, "payload")?),
        content_type: text(&sid, stream, "content_type")?,
        message_id,
        correlation_id: uuid(&sid, stream, "correlation_id")?.unwrap_or(message_id),
        causation_id: uuid(&sid, stream, "causation_id")?,
        headers,
    };
    Ok(OutboxEntry {
        id: format!("{shard}/{}", sid.id),
        record,
        deliveries,
    })
}

/// Splits an entry id `"<shard>/<stream id>"`.
fn split_id(id: &str) -> Result<(u32, &str)> {
    id.split_once('/')
        .and_then(|(shard, sid)| Some((shard.parse().ok()?, sid)))
        .ok_or_else(|| {
            Error::store(format!("`{id}` is not a Redis outbox entry id")).with_retryable(false)
        })
}

impl OutboxStore for RedisStore {
    fn append(&self, records: Vec<OutboxRecord>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let shard = self.keys.shard_of(&records[0].message_id.to_string());
            let stream = self.keys.outbox(shard);
            let mut inv = self.scripts.append.key(&stream);
            inv.arg(records.len());
            for r in &records {
                push_event(&mut inv, r)?;
            }
            let mut conn = self.conn.clone();
            let _: i64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error("appending to the outbox", e))?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<OutboxEntry>>> {
        Box::pin(async move {
            let shards = self.keys.shards();
            let start = self.next_shard.fetch_add(1, Ordering::Relaxed);
            if self.prune_due(min_idle) {
                for shard in 0..shards {
                    if let Err(e) = self.prune_consumers(shard, consumer, min_idle).await {
                        tracing::debug!(shard, error = %e, "could not prune relay consumers");
                    }
                }
            }
            let reclaim = self.reclaim_due(min_idle);
            let mut out = Vec::new();
            if !reclaim && shards > 1 && matches!(self.conn, crate::conn::Conn::Single(_)) {
                // One node holds every shard: one read of all their streams.
                let all: Vec<u32> = (0..shards).collect();
                self.read_new(&all, consumer, max, &mut out).await?;
                return Ok(out);
            }
            for i in 0..shards {
                if out.len() >= max {
                    break;
                }
                let shard = (start + i) % shards;
                self.claim_shard(shard, consumer, max, min_idle, reclaim, &mut out)
                    .await?;
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut by_shard: BTreeMap<u32, Vec<&str>> = Default::default();
            for id in ids {
                let (shard, sid) = split_id(id)?;
                by_shard.entry(shard).or_default().push(sid);
            }
            let mut conn = self.conn.clone();
            for (shard, sids) in by_shard {
                let stream = self.keys.outbox(shard);
                let mut inv = self.scripts.ack.key(&stream);
                inv.arg(self.keys.group());
                for sid in sids {
                    inv.arg(sid);
                }
                let _: i64 = inv
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| store_error("acknowledging outbox entries", e))?;
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        entry: &'a OutboxEntry,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (shard, sid) = split_id(&entry.id)?;
            self.dead_letter_raw(shard, sid, reason).await
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut n = 0;
            for shard in 0..self.keys.shards() {
                let len: usize = conn
                    .xlen(self.keys.outbox(shard))
                    .await
                    .map_err(|e| store_error("XLEN of the outbox", e))?;
                n += len;
            }
            Ok(n)
        })
    }

    fn outbox_identity(&self) -> Option<String> {
        self.identity.as_deref().map(str::to_owned)
    }
}
