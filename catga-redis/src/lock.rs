//! The fenced lock on Redis: acquire (and the next fence) in one script,
//! compare-and-act renew and release, and the current fence for receivers.

use std::time::Duration;

use catga_core::Result;
use catga_core::store::{Lease, LockStore, random_token};
use futures_util::future::BoxFuture;
use redis::AsyncCommands;

use crate::conn::store_error;
use crate::store::{RedisStore, ms};

impl LockStore for RedisStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move {
            let (key, fence) = self.keys.lock(name);
            // The token of an acquisition whose answer never came, if any:
            // Redis may have applied it, and asking with the same token gets
            // that term back instead of finding the lock held for a lease.
            let token = self
                .unanswered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name)
                .unwrap_or_else(random_token);
            let mut conn = self.conn.clone();
            let fence: Option<u64> = match self
                .scripts
                .lock_acquire
                .key(&key)
                .key(&fence)
                .arg(&token)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
            {
                Ok(fence) => fence,
                Err(e) => {
                    self.unanswered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.to_owned(), token);
                    return Err(store_error(&format!("acquiring lock `{key}`"), e));
                }
            };
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
