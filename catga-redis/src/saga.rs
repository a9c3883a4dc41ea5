//! Saga state on Redis: one hash per saga, a set of unfinished ids per
//! definition and shard; the shard comes from the saga id, so the hash and the
//! set it is listed in share a hash slot and every change to both is one script.

use catga_core::saga::{SagaState, SagaStatus, SagaStore, conflict};
use catga_core::{Error, Result, Uuid};
use futures_util::future::BoxFuture;
use redis::AsyncCommands;

use crate::conn::store_error;
use crate::store::{RedisStore, ms};

impl SagaStore for RedisStore {
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (key, unfinished) = self.keys.saga(state.id, &state.saga);
            let created: i64 = self
                .scripts
                .saga_create
                .key(&key)
                .key(&unfinished)
                .arg(state.to_bytes()?)
                .arg(state.version)
                .arg(state.fence)
                .arg(state.id.to_string())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("creating `{key}`"), e))?;
            Ok(created == 1)
        })
    }

    fn load(&self, id: Uuid) -> BoxFuture<'_, Result<Option<SagaState>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (key, _) = self.keys.saga(id, "");
            let blob: Option<Vec<u8>> = conn
                .hget(&key, "state")
                .await
                .map_err(|e| store_error(&format!("loading `{key}`"), e))?;
            blob.map(|b| {
                SagaState::from_bytes(&b).map_err(|e| {
                    Error::store(format!(
                        "the saga state under `{key}` is corrupt: {}",
                        e.message()
                    ))
                    .with_retryable(false)
                })
            })
            .transpose()
        })
    }

    fn save<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (key, unfinished) = self.keys.saga(state.id, &state.saga);
            let retention = if state.status.is_finished() {
                ms(self.saga_retention)
            } else {
                0
            };
            let outcome: String = self
                .scripts
                .saga_save
                .key(&key)
                .key(&unfinished)
                .key(self.keys.failed_saga_set(state.id, &state.saga))
                .arg(state.version.saturating_sub(1))
                .arg(state.version)
                .arg(state.fence)
                .arg(state.to_bytes()?)
                .arg(state.id.to_string())
                .arg(retention)
                .arg(u8::from(state.status == SagaStatus::Failed))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("saving `{key}`"), e))?;
            match outcome.as_str() {
                "ok" => Ok(()),
                "version" => Err(conflict(state.id, "its version changed")),
                "fence" => Err(conflict(state.id, "a newer coordinator wrote it")),
                _ => Err(conflict(state.id, "it does not exist")),
            }
        })
    }

    fn failed<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut out = Vec::new();
            for shard in 0..self.keys.shards() {
                let set = self.keys.failed_sagas(shard, saga);
                let ids: Vec<String> = conn
                    .smembers(&set)
                    .await
                    .map_err(|e| store_error(&format!("listing `{set}`"), e))?;
                for id in ids.iter().filter_map(|id| id.parse::<Uuid>().ok()) {
                    // Its state expired with the retention: drop the entry.
                    if self.load(id).await?.is_some() {
                        out.push(id);
                    } else {
                        let _: usize = conn
                            .srem(&set, id.to_string())
                            .await
                            .map_err(|e| store_error(&format!("updating `{set}`"), e))?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn forget<'a>(&'a self, saga: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (hash, set) = self.keys.saga(id, saga);
            // Kept when it is unfinished after all (an operator resumed it
            // since the caller read it finished): checked in the same step.
            let _: usize = self
                .scripts
                .saga_forget
                .key(&hash)
                .key(&set)
                .arg(id.to_string())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("updating `{set}`"), e))?;
            Ok(())
        })
    }

    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut out = Vec::new();
            let sets: Vec<String> = (0..self.keys.shards())
                .map(|shard| self.keys.unfinished_sagas(shard, saga))
                .collect();
            // One node holds every shard: one `SUNION` lists them all (on a
            // cluster the sets live in different slots: one read each).
            let single = matches!(self.conn, crate::conn::Conn::Single(_));
            let reads: Vec<&[String]> = if single {
                vec![&sets[..]]
            } else {
                sets.chunks(1).collect()
            };
            for read in reads {
                let ids: Vec<String> = conn
                    .sunion(read)
                    .await
                    .map_err(|e| store_error(&format!("listing `{}`", read.join(" ")), e))?;
                for id in ids {
                    match id.parse::<Uuid>() {
                        Ok(id) => out.push(id),
                        Err(_) => {
                            // Not an id (written by something else): dropped
                            // from whichever of the sets holds it.
                            for set in read {
                                let _: redis::RedisResult<usize> = conn.srem(set, &id).await;
                            }
                        }
                    }
                }
            }
            out.sort_unstable();
            Ok(out)
        })
    }

    /// `SCARD` of every shard's list, sent together (one round trip's
    /// wait; not one pipeline, which a Redis Cluster refuses across slots).
    fn count_unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let counts = (0..self.keys.shards()).map(|shard| {
                let set = self.keys.unfinished_sagas(shard, saga);
                let mut conn = self.conn.clone();
                async move {
                    conn.scard::<_, usize>(&set)
                        .await
                        .map_err(|e| store_error(&format!("counting `{set}`"), e))
                }
            });
            let counts = futures_util::future::try_join_all(counts).await?;
            Ok(counts.into_iter().sum())
        })
    }
}
