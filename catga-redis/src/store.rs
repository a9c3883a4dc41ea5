//! [`RedisStore`]: the connection, key layout and scripts the Redis stores
//! share. Each store trait is implemented in a file of its own:
//! `idempotency.rs`, `outbox.rs`, `lock.rs`, `saga.rs`.

use std::collections::HashSet;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_core::Result;
use redis::Script;

use crate::conn::{self, Conn};
use crate::keys::Keys;
use crate::options::RedisOptions;

/// The Lua scripts, one per atomic operation that must compare before it acts
/// (`catga-redis/lua/`), hashed once.
pub(crate) struct Scripts {
    pub(crate) complete: Script,
    pub(crate) complete_plain: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
    pub(crate) lock_acquire: Script,
    pub(crate) append: Script,
    pub(crate) ack: Script,
    pub(crate) dead_letter: Script,
    pub(crate) lock_renew: Script,
    pub(crate) lock_release: Script,
    pub(crate) saga_save: Script,
    pub(crate) saga_create: Script,
    pub(crate) replay_dead_letter: Script,
    pub(crate) prune_consumers: Script,
    pub(crate) saga_forget: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            complete: Script::new(include_str!("../lua/complete.lua")),
            complete_plain: Script::new(include_str!("../lua/complete_plain.lua")),
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
            prune_consumers: Script::new(include_str!("../lua/prune_consumers.lua")),
            saga_forget: Script::new(include_str!("../lua/saga_forget.lua")),
            replay_dead_letter: Script::new(include_str!("../lua/replay_dead_letter.lua")),
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
    pub(crate) groups: Arc<Mutex<HashSet<u32>>>,
    pub(crate) next_shard: Arc<AtomicU32>,
    /// When this store last removed relay consumers of dead peers.
    pub(crate) pruned: Arc<Mutex<Option<std::time::Instant>>>,
    /// When this store last reclaimed entries of dead relays.
    pub(crate) reclaimed: Arc<Mutex<Option<std::time::Instant>>>,
    pub(crate) saga_retention: Duration,
    pub(crate) dead_letters_max: usize,
    /// By lock name, the token of an acquisition that got no answer (see
    /// `lua/lock_acquire.lua`): the next acquisition asks with it.
    pub(crate) unanswered: Arc<Mutex<std::collections::HashMap<String, String>>>,
    /// Which outbox this is (see [`OutboxStore::outbox_identity`]): the id
    /// kept under the outbox's key prefix, and the shard count; `None` for a
    /// connection the application gave, or when Redis did not answer.
    ///
    /// [`OutboxStore::outbox_identity`]: catga_core::store::OutboxStore::outbox_identity
    pub(crate) identity: Option<Arc<str>>,
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

/// The id of the outbox under `key`: drawn by the first store to connect
/// and kept in Redis (`SET NX GET`), so every store that reaches the same
/// keys reads the same id, whatever URL it came by. `None` when Redis does
/// not answer it (a read-only replica, a command not allowed).
async fn outbox_id(conn: &Conn, key: &str) -> Option<String> {
    let mut conn = conn.clone();
    let mine = catga_core::new_id().to_string();
    let before: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&mine)
        .arg("NX")
        .arg("GET")
        .query_async(&mut conn)
        .await
        .ok()?;
    Some(before.unwrap_or(mine))
}

impl RedisStore {
    /// Connects; fails with a store error when Redis does not answer. Reads
    /// (or, first, writes) the outbox's id (`SET NX GET`, see the crate's
    /// key layout), which tells the builder one outbox from another.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore> {
        let conn = if options.cluster {
            conn::cluster(&options.urls, options.timeout, &options.tls).await?
        } else {
            conn::single(&options.urls[0], options.timeout, &options.tls).await?
        };
        let mut store = RedisStore::with(conn, &options);
        store.identity = outbox_id(&store.conn, &store.keys.outbox_id())
            .await
            .map(|id| {
                format!(
                    "Redis outbox {id}, {} shards, key prefix `{}`",
                    options.outbox_shards, options.prefix
                )
                .into()
            });
        Ok(store)
    }

    /// A store over a connection the application already has to a single
    /// node (its own retries and timeouts). `options` gives everything but
    /// the connection: key prefix, outbox shards, retention, dead-letter
    /// bound; its URLs, TLS and timeout are the connection's business here.
    pub fn from_connection_manager(
        connection: redis::aio::ConnectionManager,
        options: &RedisOptions,
    ) -> RedisStore {
        RedisStore::with(Conn::Single(connection), options)
    }

    /// Like [`RedisStore::from_connection_manager`], over a Redis Cluster
    /// connection the application already has.
    pub fn from_cluster_connection(
        connection: redis::cluster_async::ClusterConnection,
        options: &RedisOptions,
    ) -> RedisStore {
        RedisStore::with(Conn::Cluster(connection), options)
    }

    fn with(conn: Conn, options: &RedisOptions) -> RedisStore {
        RedisStore {
            conn,
            keys: Keys::new(&options.prefix, options.outbox_shards),
            scripts: Arc::new(Scripts::load()),
            groups: Arc::default(),
            next_shard: Arc::default(),
            pruned: Arc::default(),
            reclaimed: Arc::default(),
            saga_retention: options.saga_retention,
            dead_letters_max: options.dead_letters_max,
            unanswered: Arc::default(),
            identity: None,
        }
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
}

/// Runs `script` by `EVALSHA` with `keys` and the arguments `args` adds, built
/// straight into one command; loads the script when the server lacks it.
pub(crate) async fn evalsha<T: redis::FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    keys: &[&str],
    args: impl FnOnce(&mut redis::Cmd),
) -> redis::RedisResult<T> {
    // Sized for a short call (the common one) so its buffers need not grow.
    let mut cmd = redis::Cmd::with_capacity(keys.len() + 6, 160);
    cmd.arg("EVALSHA");
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
