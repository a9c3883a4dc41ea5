//! The idempotency store on Redis: claims, renewals, releases, and the
//! completion script that applies a unit of work, stores the response and
//! appends the events to the outbox in one step.

use std::time::Duration;

use bytes::Bytes;
use catga_core::store::{
    Claim, Completed, Completion, Condition, IdempotencyStore, UnitOfWork, Write, random_token,
};
use catga_core::{Error, Result};
use futures_util::future::BoxFuture;
use redis::{ScriptInvocation, Value};

use crate::conn::store_error;
use crate::keys;
use crate::outbox::push_event;
use crate::store::{RedisStore, evalsha, ms};

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

/// What a claim found under `idem`: `previous`, the value before the claim's
/// `SET NX GET` (`pending` is the value the claim set, `p:` and `token`).
fn claimed(idem: &str, previous: Option<Vec<u8>>, pending: &[u8], token: String) -> Result<Claim> {
    match previous {
        None => Ok(Claim::Acquired { token }),
        // Our own claim: the command ran twice (a client that sends it again
        // after a dropped connection, as the cluster client does), and the
        // first run took the key.
        Some(v) if v == pending => Ok(Claim::Acquired { token }),
        Some(v) if v.starts_with(b"p:") => Ok(Claim::InProgress),
        Some(v) if v.starts_with(b"c:") => Ok(Claim::Completed(Bytes::from(v).slice(2..))),
        Some(_) => Err(Error::store(format!(
            "the value under `{idem}` is not a Catga idempotency record; delete the key if it \
             was written by something else"
        ))
        .with_retryable(false)),
    }
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
            // Sized up front: the command's buffers grow by reallocation otherwise.
            let mut set = redis::Cmd::with_capacity(7, idem.len() + pending.len() + 24);
            let previous: Option<Vec<u8>> = set
                .arg("SET")
                .arg(&idem)
                .arg(&pending)
                .arg("NX")
                .arg("PX")
                .arg(ms(lease))
                .arg("GET")
                .query_async(&mut conn)
                .await
                .map_err(|e| claim_error(&idem, e))?;
            claimed(&idem, previous, &pending, token)
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
                // The common completion: its own short script, with the
                // values built here rather than in Lua, and one command
                // built directly (a script invocation copies every argument
                // twice). About a third less of Redis's time than the full
                // script.
                let retention = ms(completion.retention);
                let claimed = [b"p:", token.as_bytes()].concat();
                let record = [b"c:", &completion.response[..]].concat();
                evalsha(&mut conn, &self.scripts.complete_plain, &[&idem], |cmd| {
                    cmd.arg(claimed).arg(record).arg(retention);
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
            // `cond:<i>` / `type:<i>`: the unit of work's key at KEYS[i] (1-based,
            // after the idempotency key and the outbox).
            let (what, index) = std::str::from_utf8(outcome)
                .ok()
                .and_then(|o| o.split_once(':'))
                .map_or(("", 3), |(what, i)| (what, i.parse::<usize>().unwrap_or(3)));
            let key = || {
                work_keys
                    .get(index.saturating_sub(3))
                    .copied()
                    .unwrap_or("?")
                    .to_owned()
            };
            Ok(match outcome {
                b"ok" => Completed::Stored,
                b"lost" => Completed::ClaimLost,
                _ if what == "type" => Completed::WrongType { key: key() },
                _ => Completed::ConditionFailed { key: key() },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_that_finds_its_own_pending_value_holds_the_key() {
        let claim = |previous: Option<&[u8]>| {
            claimed("k", previous.map(<[u8]>::to_vec), b"p:mine", "mine".into()).unwrap()
        };
        let ours = Claim::Acquired {
            token: "mine".into(),
        };
        assert_eq!(claim(None), ours);
        // Sent twice, applied twice: the second run finds the first's value.
        assert_eq!(claim(Some(b"p:mine")), ours);
        assert_eq!(claim(Some(b"p:theirs")), Claim::InProgress);
        assert_eq!(claim(Some(b"c:done")), Claim::Completed("done".into()));
        assert!(claimed("k", Some(b"junk".to_vec()), b"p:mine", "mine".into()).is_err());
    }

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
