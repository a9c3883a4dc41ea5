//! Saga state on Redis: one hash per saga, a set of unfinished ids per definition.

use catga_core::saga::{SagaState, SagaStore, conflict};
use catga_core::{Error, Result, Uuid};
use futures_util::future::BoxFuture;
use redis::AsyncCommands;

use crate::conn::store_error;
use crate::store::RedisStore;

impl SagaStore for RedisStore {
    fn create<'a>(&'a self, state: &'a SagaState) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let blob = state.to_bytes()?;
            let key = self.keys.saga(state.id);
            let created: i64 = self
                .scripts
                .saga_create
                .key(&key)
                .arg(blob)
                .arg(state.version)
                .arg(state.fence)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("creating `{key}`"), e))?;
            // Listed after it is stored, so the coordinator never sees an id
            // without state. A retried start lists it again (the first start may
            // have died between the two), unless it has finished meanwhile.
            let list = created == 1
                || match self.load(state.id).await? {
                    Some(stored) => !stored.status.is_finished(),
                    None => false,
                };
            if list {
                let _: usize = conn
                    .sadd(
                        self.keys.unfinished_sagas(&state.saga),
                        state.id.to_string(),
                    )
                    .await
                    .map_err(|e| store_error("indexing a new saga", e))?;
            }
            Ok(created == 1)
        })
    }

    fn load(&self, id: Uuid) -> BoxFuture<'_, Result<Option<SagaState>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = self.keys.saga(id);
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
            let key = self.keys.saga(state.id);
            let outcome: String = self
                .scripts
                .saga_save
                .key(&key)
                .arg(state.version.saturating_sub(1))
                .arg(state.version)
                .arg(state.fence)
                .arg(state.to_bytes()?)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(&format!("saving `{key}`"), e))?;
            match outcome.as_str() {
                "ok" => {}
                "version" => return Err(conflict(state.id, "its version changed")),
                "fence" => return Err(conflict(state.id, "a newer coordinator wrote it")),
                _ => return Err(conflict(state.id, "it does not exist")),
            }
            if state.status.is_finished() {
                // Should this fail (or the process die first), the coordinator
                // forgets the id when it next lists and loads it.
                self.forget(&state.saga, state.id).await?;
            }
            Ok(())
        })
    }

    fn forget<'a>(&'a self, saga: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let set = self.keys.unfinished_sagas(saga);
            let _: usize = conn
                .srem(&set, id.to_string())
                .await
                .map_err(|e| store_error(&format!("updating `{set}`"), e))?;
            Ok(())
        })
    }

    fn unfinished<'a>(&'a self, saga: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let set = self.keys.unfinished_sagas(saga);
            let ids: Vec<String> = conn
                .smembers(&set)
                .await
                .map_err(|e| store_error(&format!("listing `{set}`"), e))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match id.parse::<Uuid>() {
                    Ok(id) => out.push(id),
                    Err(_) => {
                        let _: redis::RedisResult<usize> = conn.srem(&set, &id).await;
                    }
                }
            }
            out.sort_unstable();
            Ok(out)
        })
    }
}
