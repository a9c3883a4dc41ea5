//! [`RedisStore`]: the idempotency, outbox and lock stores of catga-core on Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use catga_core::store::{
    Claim, Completed, Completion, Condition, IdempotencyStore, Lease, LockStore, OutboxEntry,
    OutboxRecord, OutboxStore, UnitOfWork, Write, random_token,
};
use catga_core::{Error, Result, Uuid};
use futures_util::future::BoxFuture;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Script, ScriptInvocation, Value};

use crate::conn::{self, Conn, store_error};
use crate::keys::{self, Keys};

/// Where and how to connect.
///
/// ```
/// use std::time::Duration;
/// use catga_redis::RedisOptions;
///
/// let single = RedisOptions::new("redis://127.0.0.1:6379/");
/// let cluster = RedisOptions::cluster(["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])
///     .prefix("shop")
///     .timeout(Duration::from_secs(1));
/// # drop((single, cluster));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisOptions {
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    outbox_shards: u32,
    timeout: Duration,
    saga_retention: Duration,
}

impl RedisOptions {
    /// One Redis node.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            urls: vec![url.into()],
            cluster: false,
            prefix: "catga".to_owned(),
            outbox_shards: 8,
            timeout: Duration::from_secs(2),
            saga_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// A Redis Cluster, given some of its nodes.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisOptions::new("")
        }
    }

    /// Key prefix (default `catga`); peers of one deployment must agree on it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Number of outbox streams (default 8). Idempotency keys and outbox entries
    /// spread over them, and so over a cluster's nodes. Peers must agree on it.
    pub fn outbox_shards(mut self, shards: u32) -> Self {
        self.outbox_shards = shards.max(1);
        self
    }

    /// How long a finished saga's state is kept for reading (default 7 days);
    /// then it expires.
    pub fn saga_retention(mut self, retention: Duration) -> Self {
        self.saga_retention = retention;
        self
    }

    /// Connect and response timeout (default 2 s): past it, an operation fails
    /// with a retryable store error instead of waiting for Redis.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

pub(crate) struct Scripts {
    complete: Script,
    renew: Script,
    release: Script,
    lock_acquire: Script,
    append: Script,
    ack: Script,
    dead_letter: Script,
    lock_renew: Script,
    lock_release: Script,
    pub(crate) saga_save: Script,
    pub(crate) saga_create: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            complete: Script::new(include_str!("../lua/complete.lua")),
            renew: Script::new(include_str!("../lua/renew.lua")),
            release: Script::new(include_str!("../lua/release.lua")),
            lock_acquire: Script::new(include_str!("../lua/lock_acquire.lua")),
            append: Script::new(include_str!("../lua/append.lua")),
            ack: Script::new(include_str!("../lua/ack.lua")),
            dead_letter: Script::new(include_str!("../lua/dead_letter.lua")),
            lock_renew: Script::new(include_str!("../lua/lock_renew.lua")),
            lock_release: Script::new(include_str!("../lua/lock_release.lua")),
            saga_save: Script::new(include_str!("../lua/saga_save.lua")),
            saga_create: Script::new(include_str!("../lua/saga_create.lua")),
        }
    }
}

/// Idempotency, outbox and lock on Redis (a node or a cluster); cheap to clone.
///
/// Give it to the idempotency behavior, to the builder's `.outbox(..)` and
/// `.lock_store(..)`: every peer of a service then shares one view.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
    /// Outbox shards whose consumer group is known to exist.
    groups: Arc<Mutex<HashSet<u32>>>,
    next_shard: Arc<AtomicU32>,
    /// When this store last removed relay consumers of dead peers.
    pruned: Arc<Mutex<Option<std::time::Instant>>>,
    pub(crate) saga_retention: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .finish_non_exhaustive()
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Connects; fails with a store error when Redis does not answer.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore> {
        let conn = if options.cluster {
            conn::cluster(&options.urls, options.timeout).await?
        } else {
            conn::single(&options.urls[0], options.timeout).await?
        };
        Ok(RedisStore {
            conn,
            keys: Keys::new(&options.prefix, options.outbox_shards),
            scripts: Arc::new(Scripts::load()),
            groups: Arc::default(),
            next_shard: Arc::default(),
            pruned: Arc::default(),
            saga_retention: options.saga_retention,
        })
    }

    /// A key for state that handlers of messages of `partition` change with a
    /// [unit of work](catga_core::store::UnitOfWork): `{<prefix>:o<shard>}:<name>`,
    /// in the shard (hash slot) where those handlers' idempotency records and
    /// outbox entries go, so all of it commits in one script. Build every key of
    /// a unit of work with it, from the message's
    /// [`partition`](catga_core::Message::partition).
    pub fn partition_key(&self, partition: &str, name: &str) -> String {
        self.keys.partition_key(partition, name)
    }

    /// `name` in every shard, as [`RedisStore::partition_key`] builds it: the
    /// keys to read to see all partitions' state.
    pub fn shard_keys(&self, name: &str) -> Vec<String> {
        (0..self.keys.shards())
            .map(|shard| self.keys.shard_key(shard, name))
            .collect()
    }

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
    /// grows with every restart.
    async fn prune_consumers(&self, shard: u32, me: &str, min_idle: Duration) -> Result<()> {
        let stream = self.keys.outbox(shard);
        let group = self.keys.group();
        let mut conn = self.conn.clone();
        let info: redis::streams::StreamInfoConsumersReply = conn
            .xinfo_consumers(&stream, &group)
            .await
            .map_err(|e| store_error("XINFO CONSUMERS on the outbox", e))?;
        let stale = u128::from(ms(min_idle)) * 10;
        for c in info.consumers {
            if c.name != me && c.pending == 0 && c.idle as u128 > stale {
                let _: usize = conn
                    .xgroup_delconsumer(&stream, &group, &c.name)
                    .await
                    .map_err(|e| store_error("XGROUP DELCONSUMER on the outbox", e))?;
                tracing::debug!(consumer = %c.name, shard, "removed the relay consumer of a dead peer");
            }
        }
        Ok(())
    }

    async fn claim_shard(
        &self,
        shard: u32,
        consumer: &str,
        max: usize,
        min_idle: Duration,
        out: &mut Vec<OutboxEntry>,
    ) -> Result<()> {
        self.ensure_group(shard).await?;
        let stream = self.keys.outbox(shard);
        let group = self.keys.group();
        let mut conn = self.conn.clone();
        let reclaimed: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &stream,
                &group,
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
                conn.xack(&stream, &group, &reclaimed.deleted_ids).await;
        }
        for sid in reclaimed.claimed {
            let pending: StreamPendingCountReply = conn
                .xpending_count(&stream, &group, &sid.id, &sid.id, 1)
                .await
                .map_err(|e| store_error("XPENDING on the outbox", e))?;
            let deliveries = pending
                .ids
                .first()
                .map_or(2, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX));
            out.push(decode_entry(shard, &stream, sid, deliveries)?);
        }
        let room = max.saturating_sub(out.len());
        if room == 0 {
            return Ok(());
        }
        let fresh: Option<StreamReadReply> = conn
            .xread_options(
                &[&stream],
                &[">"],
                &StreamReadOptions::default()
                    .group(&group, consumer)
                    .count(room),
            )
            .await
            .map_err(|e| {
                self.forget_group(shard, &e);
                store_error("XREADGROUP on the outbox", e)
            })?;
        for key in fresh.map(|r| r.keys).unwrap_or_default() {
            for sid in key.ids {
                out.push(decode_entry(shard, &stream, sid, 1)?);
            }
        }
        Ok(())
    }
}

/// Adds an event's seven fields to a script invocation (see `lua/complete.lua`).
fn push_event(inv: &mut ScriptInvocation<'_>, record: &OutboxRecord) -> Result<()> {
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

/// Runs `script` by `EVALSHA` with `keys` and the arguments `args` adds, built
/// straight into one command; loads the script when the server lacks it.
async fn evalsha<T: redis::FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    keys: &[&str],
    args: impl FnOnce(&mut redis::Cmd),
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    args(&mut cmd);
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// Adds a unit of work's conditions and writes to a completion (see
/// `lua/complete.lua`); keys are named by their index among the script's
/// keys, the unit of work's keys starting at 3.
fn push_work(inv: &mut ScriptInvocation<'_>, work: &UnitOfWork, keys: &[&str]) -> Result<()> {
    let index = |key: &str| keys.iter().position(|k| *k == key).map_or(0, |i| i + 3);
    let unknown = |what: &str| {
        Error::new(
            catga_core::ErrorKind::Config,
            format!("this version of catga-redis cannot apply the staged {what}"),
        )
        .with_retryable(false)
    };
    inv.arg(work.conditions().len());
    for c in work.conditions() {
        let Condition::Equals { key, field, value } = c else {
            return Err(unknown("condition"));
        };
        inv.arg(index(key))
            .arg(field.as_deref().unwrap_or(""))
            .arg(if value.is_some() { "1" } else { "0" })
            .arg(value.as_deref().unwrap_or(b""));
    }
    inv.arg(work.writes().len());
    for w in work.writes() {
        let (op, x, y): (&str, &[u8], Vec<u8>) = match w {
            Write::Set { value, .. } => ("set", value, Vec::new()),
            Write::Delete { .. } => ("del", b"", Vec::new()),
            Write::HashSet { field, value, .. } => ("hset", field.as_bytes(), value.to_vec()),
            Write::HashDelete { field, .. } => ("hdel", field.as_bytes(), Vec::new()),
            Write::Increment {
                field: None, by, ..
            } => ("incr", &[], by.to_string().into_bytes()),
            Write::Increment {
                field: Some(field),
                by,
                ..
            } => ("hincr", field.as_bytes(), by.to_string().into_bytes()),
            Write::Append { value, .. } => ("rpush", value, Vec::new()),
            _ => return Err(unknown("write")),
        };
        // `incr` takes its amount first (INCRBY key by).
        let (x, y) = if op == "incr" {
            (&y[..], &[][..])
        } else {
            (x, &y[..])
        };
        inv.arg(op).arg(index(w.key())).arg(x).arg(y);
    }
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
        "outbox entry {id} in `{stream}` is corrupt: {what}; move it aside with XDEL after inspection"
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

/// A failed claim. Redis before 7.0 rejects `SET … NX … GET` as a syntax error:
/// that is a deployment problem, not worth retrying.
fn claim_error(key: &str, e: redis::RedisError) -> Error {
    if e.to_string().to_ascii_lowercase().contains("syntax error") {
        return Error::store(format!(
            "claiming `{key}`: {e}; catga-redis needs Redis 7.0 or later (SET with NX and GET)"
        ))
        .with_retryable(false)
        .with_source(e);
    }
    store_error(&format!("claiming `{key}`"), e)
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim>> {
        Box::pin(async move {
            let (idem, _) = self.keys.idempotency(key);
            let token = random_token();
            let mut conn = self.conn.clone();
            // One native command: set the in-progress record if the key is free,
            // and return whatever was there (Redis 7.0+ accepts NX with GET).
            let mut pending = Vec::with_capacity(2 + token.len());
            pending.extend_from_slice(b"p:");
            pending.extend_from_slice(token.as_bytes());
            let previous: Option<Vec<u8>> = redis::cmd("SET")
                .arg(&idem)
                .arg(pending)
                .arg("NX")
                .arg("PX")
                .arg(ms(lease))
                .arg("GET")
                .query_async(&mut conn)
                .await
                .map_err(|e| claim_error(&idem, e))?;
            match previous {
                None => Ok(Claim::Acquired { token }),
                Some(v) if v.starts_with(b"p:") => Ok(Claim::InProgress),
                Some(v) if v.starts_with(b"c:") => Ok(Claim::Completed(Bytes::from(v).slice(2..))),
                Some(_) => Err(Error::store(format!(
                    "the value under `{idem}` is not a Catga idempotency record; delete the key \
                     if it was written by something else"
                ))
                .with_retryable(false)),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, Result<Completed>> {
        Box::pin(async move {
            let (idem, outbox) = self.keys.idempotency(key);
            let work_keys = completion.work.keys();
            let slot = keys::tag_of(&idem);
            if let Some(stray) = work_keys.iter().find(|k| keys::tag_of(k) != slot) {
                return Err(Error::new(
                    catga_core::ErrorKind::Config,
                    format!(
                        "the unit of work's key `{stray}` is not in the shard of `{idem}`: build \
                         it with `RedisStore::partition_key` from the message's partition, so \
                         that it commits in one step with the completion (on Redis Cluster too)"
                    ),
                )
                .with_retryable(false));
            }
            let mut conn = self.conn.clone();
            let outcome: Value = if completion.events.is_empty() && completion.work.is_empty() {
                // The common completion: no counts, and one command built
                // directly (a script invocation copies every argument twice).
                let retention = ms(completion.retention);
                evalsha(&mut conn, &self.scripts.complete, &[&idem, outbox], |cmd| {
                    cmd.arg(token).arg(&completion.response[..]).arg(retention);
                })
                .await
            } else {
                let mut inv = self.scripts.complete.key(&idem);
                inv.key(outbox);
                for k in &work_keys {
                    inv.key(*k);
                }
                inv.arg(token)
                    .arg(&completion.response[..])
                    .arg(ms(completion.retention))
                    .arg(completion.events.len());
                for e in &completion.events {
                    push_event(&mut inv, e)?;
                }
                push_work(&mut inv, &completion.work, &work_keys)?;
                inv.invoke_async(&mut conn).await
            }
            .map_err(|e| store_error(&format!("completing `{idem}`"), e))?;
            let outcome = match &outcome {
                Value::BulkString(b) => b.as_slice(),
                Value::SimpleString(s) => s.as_bytes(),
                _ => b"",
            };
            Ok(match outcome {
                b"ok" => Completed::Stored,
                b"lost" => Completed::ClaimLost,
                other => {
                    let index = std::str::from_utf8(other)
                        .ok()
                        .and_then(|o| o.strip_prefix("cond:"))
                        .and_then(|i| i.parse::<usize>().ok())
                        .unwrap_or(3);
                    let key = work_keys
                        .get(index.saturating_sub(3))
                        .copied()
                        .unwrap_or("?");
                    Completed::ConditionFailed {
                        key: key.to_owned(),
                    }
                }
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (idem, _) = self.keys.idempotency(key);
            let mut conn = self.conn.clone();
            let renewed: i64 = self
                .scripts
                .renew
                .key(&idem)
                .arg(token)
                .arg(ms(lease))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("renewing `{idem}`"), e))?;
            Ok(renewed == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (idem, _) = self.keys.idempotency(key);
            let mut conn = self.conn.clone();
            let _: i64 = self
                .scripts
                .release
                .key(&idem)
                .arg(token)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("releasing `{idem}`"), e))?;
            Ok(())
        })
    }
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
            let mut out = Vec::new();
            for i in 0..shards {
                if out.len() >= max {
                    break;
                }
                let shard = (start + i) % shards;
                self.claim_shard(shard, consumer, max, min_idle, &mut out)
                    .await?;
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut by_shard: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
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
            let mut conn = self.conn.clone();
            let _: i64 = self
                .scripts
                .dead_letter
                .key(self.keys.outbox(shard))
                .key(self.keys.dead_letters(shard))
                .arg(self.keys.group())
                .arg(sid)
                .arg(reason)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error("dead-lettering an outbox entry", e))?;
            Ok(())
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
}

impl LockStore for RedisStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move {
            let (key, fence) = self.keys.lock(name);
            let token = random_token();
            let mut conn = self.conn.clone();
            let fence: Option<u64> = self
                .scripts
                .lock_acquire
                .key(&key)
                .key(&fence)
                .arg(&token)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("acquiring lock `{key}`"), e))?;
            Ok(fence.map(|fence| Lease { token, fence }))
        })
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (key, _) = self.keys.lock(name);
            let mut conn = self.conn.clone();
            let renewed: i64 = self
                .scripts
                .lock_renew
                .key(&key)
                .arg(token)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("renewing lock `{key}`"), e))?;
            Ok(renewed == 1)
        })
    }

    fn current_fence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (_, fence) = self.keys.lock(name);
            let mut conn = self.conn.clone();
            let current: Option<u64> = conn
                .get(&fence)
                .await
                .map_err(|e| store_error(&format!("reading `{fence}`"), e))?;
            Ok(current.unwrap_or(0))
        })
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (key, _) = self.keys.lock(name);
            let mut conn = self.conn.clone();
            let released: i64 = self
                .scripts
                .lock_release
                .key(&key)
                .arg(token)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("releasing lock `{key}`"), e))?;
            Ok(released == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_set_nx_get_is_a_non_retryable_error_that_names_the_version() {
        let old = redis::RedisError::from((redis::ErrorKind::Parse, "ERR syntax error"));
        let e = claim_error("{catga:idem:x}", old);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("Redis 7.0"), "{e}");
        let away = redis::RedisError::from((redis::ErrorKind::Io, "connection refused"));
        let e = claim_error("{catga:idem:x}", away);
        assert!(e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("Redis 7.0"), "{e}");
    }
}
