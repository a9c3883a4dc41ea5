//! Key layout. Every key an atomic script touches shares one hash tag, so the
//! store works on Redis Cluster as on a single node.
//!
//! - idempotency: `{<prefix>:o<shard>}:idem:<scope>:<message id>`
//! - outbox:      `{<prefix>:o<shard>}:outbox` and `{<prefix>:o<shard>}:outbox:dead`,
//!   and `{<prefix>:o0}:outbox:id`, the outbox's id (drawn by the first store
//!   to connect; stores compare it to tell one outbox from another)
//! - lock:        `{<prefix>:lock:<name>}` and `{<prefix>:lock:<name>}:fence`
//! - sagas:       `{<prefix>:sagas:s<shard>}:saga:<id>` (a hash) and
//!   `{<prefix>:sagas:s<shard>}:unfinished:<name>` (a set), the shard taken
//!   from the saga id, so creating, finishing and listing a saga is one script
//!
//! An idempotency key and the outbox stream its completion writes to live in the
//! same shard; shards spread the keys over the cluster's slots.

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    shards: u32,
    /// Per shard: its hash tag `{<prefix>:o<shard>}` and its outbox stream,
    /// built once (every claim and completion names them).
    tags: std::sync::Arc<[(String, String)]>,
}

impl Keys {
    pub(crate) fn new(prefix: &str, shards: u32) -> Keys {
        let shards = shards.max(1);
        let tags = (0..shards)
            .map(|shard| {
                let tag = format!("{{{prefix}:o{shard}}}");
                let outbox = format!("{tag}:outbox");
                (tag, outbox)
            })
            .collect();
        Keys {
            prefix: prefix.to_owned(),
            shards,
            tags,
        }
    }

    pub(crate) fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an idempotency key: of its `{<partition>}` hash tag when it
    /// begins with one, else of the whole key.
    pub(crate) fn shard_of_key(&self, key: &str) -> u32 {
        match tag_of(key) {
            Some(partition) => self.shard_of(partition),
            None => self.shard_of(key),
        }
    }

    /// The shard of `text` (FNV-1a, stable across peers and builds).
    pub(crate) fn shard_of(&self, key: &str) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h % self.shards
    }

    fn tag(&self, shard: u32) -> &str {
        &self.tags[(shard % self.shards) as usize].0
    }

    /// The record of idempotency key `key` and the outbox stream of its shard.
    pub(crate) fn idempotency(&self, key: &str) -> (String, &str) {
        let (tag, outbox) = &self.tags[self.shard_of_key(key) as usize];
        let mut idem = String::with_capacity(tag.len() + 6 + key.len());
        idem.push_str(tag);
        idem.push_str(":idem:");
        idem.push_str(key);
        (idem, outbox)
    }

    /// A key for a unit of work of messages of `partition`: in the shard their
    /// idempotency records and outbox entries go to.
    pub(crate) fn partition_key(&self, partition: &str, name: &str) -> String {
        self.shard_key(self.shard_of(partition), name)
    }

    /// `name` in shard `shard`.
    pub(crate) fn shard_key(&self, shard: u32, name: &str) -> String {
        format!("{}:{name}", self.tag(shard))
    }

    pub(crate) fn outbox(&self, shard: u32) -> String {
        self.tags[(shard % self.shards) as usize].1.clone()
    }

    /// Where the outbox's id is kept (see the module's key layout).
    pub(crate) fn outbox_id(&self) -> String {
        format!("{}:outbox:id", self.tag(0))
    }

    pub(crate) fn dead_letters(&self, shard: u32) -> String {
        format!("{}:outbox:dead", self.tag(shard))
    }

    pub(crate) fn lock(&self, name: &str) -> (String, String) {
        let key = format!("{{{}:lock:{name}}}", self.prefix);
        let fence = format!("{key}:fence");
        (key, fence)
    }

    fn saga_tag(&self, shard: u32) -> String {
        format!("{{{}:sagas:s{shard}}}", self.prefix)
    }

    /// The hash holding one saga's state, and the unfinished set of definition
    /// `saga` in the same shard.
    pub(crate) fn saga(&self, id: uuid::Uuid, saga: &str) -> (String, String) {
        let tag = self.saga_tag(self.shard_of(&id.to_string()));
        (
            format!("{tag}:saga:{id}"),
            format!("{tag}:unfinished:{saga}"),
        )
    }

    /// The failed set of definition `saga` for saga `id` (its shard).
    pub(crate) fn failed_saga_set(&self, id: uuid::Uuid, saga: &str) -> String {
        let tag = self.saga_tag(self.shard_of(&id.to_string()));
        format!("{tag}:failed:{saga}")
    }

    /// The failed set of definition `saga` in `shard`.
    pub(crate) fn failed_sagas(&self, shard: u32, saga: &str) -> String {
        format!("{}:failed:{saga}", self.saga_tag(shard))
    }

    /// The unfinished set of definition `saga` in `shard`.
    pub(crate) fn unfinished_sagas(&self, shard: u32, saga: &str) -> String {
        format!("{}:unfinished:{saga}", self.saga_tag(shard))
    }

    /// The consumer group every relay joins.
    pub(crate) fn group(&self) -> String {
        format!("{}-relay", self.prefix)
    }
}

/// The hash tag of `key` as Redis Cluster reads it: the text between the first
/// `{` and the next `}`, when not empty.
pub(crate) fn tag_of(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_keys_share_a_hash_tag() {
        let k = Keys::new("catga", 8);
        let (idem, outbox) = k.idempotency("orders.Create/h:0193");
        let tag = |s: &str| s[s.find('{').unwrap()..=s.find('}').unwrap()].to_owned();
        assert_eq!(tag(&idem), tag(outbox));
        let (lock, fence) = k.lock("scheduler");
        assert_eq!(tag(&lock), tag(&fence));
        assert_eq!(tag(&k.outbox(3)), tag(&k.dead_letters(3)));
        let id = uuid::Uuid::now_v7();
        let (saga, unfinished) = k.saga(id, "orders.payment");
        assert_eq!(tag(&saga), tag(&unfinished));
        assert_eq!(
            unfinished,
            k.unfinished_sagas(k.shard_of(&id.to_string()), "orders.payment")
        );
        assert!(k.shard_of("x") < 8);
        // A partitioned key shares the slot of the partition's unit-of-work keys.
        let (idem, _) = k.idempotency("{order-7}orders.Settle:0193");
        assert_eq!(tag(&idem), tag(&k.partition_key("order-7", "shop:order:7")));
        assert_eq!(tag_of("{a}b{c}"), Some("a"));
        assert_eq!(tag_of("{}x"), None);
    }
}
