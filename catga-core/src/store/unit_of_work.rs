//! A unit of work: writes a handler stages, committed with its completion.
//!
//! Under the [idempotency behavior](crate::dispatch::behavior::idempotency::Idempotency),
//! a handler whose state lives in the idempotency store's database (Redis, or
//! the in-memory store) does not write it directly: it reads what it needs,
//! stages its writes (and the values it read, as conditions) with
//! [`Context::stage`](crate::Context::stage), and the completion applies them
//! in the same atomic step that stores its response and appends its events to
//! the outbox. So a state change, its idempotency record and its events commit
//! together or not at all: a crash before the completion leaves nothing, a
//! completion whose claim was taken over writes nothing, and a condition that
//! no longer holds (someone changed the state since it was read) writes
//! nothing and fails the attempt with a retryable
//! [`Conflict`](crate::ErrorKind::Conflict) (code `catga.condition_failed`), so
//! the retry reads again. A write that does not fit what its key holds (a
//! hash write to a list, an increment of what is not an integer) writes
//! nothing either, and fails the attempt for good
//! ([`Store`](crate::ErrorKind::Store), code `catga.wrong_type`).
//!
//! ```
//! use catga_core::store::UnitOfWork;
//!
//! let work = UnitOfWork::new()
//!     .expect_field("{catga:o3}:orders", "42", Some("created"))
//!     .hash_set("{catga:o3}:orders", "42", "paid")
//!     .append("{catga:o3}:ledger", "42 paid");
//! assert_eq!(work.writes().len(), 2);
//! ```
//!
//! On Redis Cluster every key of a unit of work must share the hash slot of the
//! completion: build them with `RedisStore::partition_key` from the message's
//! [`partition`](crate::Message::partition).

use bytes::Bytes;

/// A write staged by a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Write {
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// Its new value.
        value: Bytes,
    },
    /// Deletes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets field `field` of the hash at `key`.
    HashSet {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// Its new value.
        value: Bytes,
    },
    /// Deletes field `field` of the hash at `key`.
    HashDelete {
        /// The hash.
        key: String,
        /// The field.
        field: String,
    },
    /// Adds `by` to the integer at `key`, or in field `field` of the hash at
    /// `key` (a missing value counts as 0).
    Increment {
        /// The key.
        key: String,
        /// The hash field, when the integer is in a hash.
        field: Option<String>,
        /// How much to add (negative to subtract).
        by: i64,
    },
    /// Appends `value` to the list at `key` (a ledger, an audit trail).
    Append {
        /// The list.
        key: String,
        /// The new last element.
        value: Bytes,
    },
}

impl Write {
    /// The key this write changes.
    pub fn key(&self) -> &str {
        match self {
            Write::Set { key, .. }
            | Write::Delete { key }
            | Write::HashSet { key, .. }
            | Write::HashDelete { key, .. }
            | Write::Increment { key, .. }
            | Write::Append { key, .. } => key,
        }
    }
}

/// A condition checked before any staged write is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// The value at `key` (field `field` of the hash at `key`, when given) is
    /// `value`; `None` means absent.
    Equals {
        /// The key.
        key: String,
        /// The hash field, when the value is in a hash.
        field: Option<String>,
        /// The value it must hold, or `None` for absent.
        value: Option<Bytes>,
    },
}

impl Condition {
    /// The key this condition reads.
    pub fn key(&self) -> &str {
        match self {
            Condition::Equals { key, .. } => key,
        }
    }
}

/// Conditions and writes a handler stages: all applied with the completion, or
/// none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct UnitOfWork {
    conditions: Vec<Condition>,
    writes: Vec<Write>,
}

impl UnitOfWork {
    /// Nothing staged.
    pub fn new() -> Self {
        UnitOfWork::default()
    }

    /// Requires `key` to hold `value` (`None`: to be absent) when the
    /// completion runs: the value the handler read, for optimistic concurrency.
    pub fn expect(mut self, key: impl Into<String>, value: Option<impl Into<Bytes>>) -> Self {
        self.conditions.push(Condition::Equals {
            key: key.into(),
            field: None,
            value: value.map(Into::into),
        });
        self
    }

    /// Requires field `field` of the hash at `key` to hold `value` (`None`: to
    /// be absent) when the completion runs.
    pub fn expect_field(
        mut self,
        key: impl Into<String>,
        field: impl Into<String>,
        value: Option<impl Into<Bytes>>,
    ) -> Self {
        self.conditions.push(Condition::Equals {
            key: key.into(),
            field: Some(field.into()),
            value: value.map(Into::into),
        });
        self
    }

    /// Stages `key = value`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.writes.push(Write::Set {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Stages the deletion of `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.writes.push(Write::Delete { key: key.into() });
        self
    }

    /// Stages `key[field] = value` in a hash.
    pub fn hash_set(
        mut self,
        key: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Self {
        self.writes.push(Write::HashSet {
            key: key.into(),
            field: field.into(),
            value: value.into(),
        });
        self
    }

    /// Stages the deletion of `key[field]` in a hash.
    pub fn hash_delete(mut self, key: impl Into<String>, field: impl Into<String>) -> Self {
        self.writes.push(Write::HashDelete {
            key: key.into(),
            field: field.into(),
        });
        self
    }

    /// Stages `key += by`.
    pub fn increment(mut self, key: impl Into<String>, by: i64) -> Self {
        self.writes.push(Write::Increment {
            key: key.into(),
            field: None,
            by,
        });
        self
    }

    /// Stages `key[field] += by` in a hash.
    pub fn hash_increment(
        mut self,
        key: impl Into<String>,
        field: impl Into<String>,
        by: i64,
    ) -> Self {
        self.writes.push(Write::Increment {
            key: key.into(),
            field: Some(field.into()),
            by,
        });
        self
    }

    /// Stages appending `value` to the list at `key`.
    pub fn append(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.writes.push(Write::Append {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds everything `other` staged after what this one staged.
    pub fn merge(mut self, other: UnitOfWork) -> Self {
        self.conditions.extend(other.conditions);
        self.writes.extend(other.writes);
        self
    }

    /// The conditions, in the order staged.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The writes, in the order staged (and applied).
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty() && self.writes.is_empty()
    }

    /// Every key the unit of work reads or writes, each once, in first-use order.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        let all = self
            .conditions
            .iter()
            .map(Condition::key)
            .chain(self.writes.iter().map(Write::key));
        for key in all {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}
