//! Distributed lock with fencing tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::error::Result;

/// A held lock: the token proves ownership; the fence increases with every
/// successful acquire of the same name, so a resource can reject writes from a
/// holder whose lease has since passed to someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Random token of this holder.
    pub token: String,
    /// Fencing token: strictly greater than that of every earlier holder.
    pub fence: u64,
}

/// Named locks with a time-to-live.
pub trait LockStore: Send + Sync + 'static {
    /// Takes `name` for `ttl` when free (or expired); `None` when someone holds it.
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>>;

    /// Extends the lease to `ttl` from now if `token` still holds it.
    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Frees `name` if `token` still holds it; returns whether it did.
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// The fence of the latest term of `name` (0 when it was never held): a
    /// message carrying a lower fence was sent by a leader whose term is over.
    /// Fences move only on a successful acquire, so the latest term's fence is
    /// the greatest ever handed out.
    fn current_fence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64>>;
}

/// A shared store is a store: pass `Arc<S>` (or `Arc<dyn LockStore>`).
impl<S: LockStore + ?Sized> LockStore for std::sync::Arc<S> {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        (**self).try_acquire(name, ttl)
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).renew(name, token, ttl)
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        (**self).release(name, token)
    }

    fn current_fence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64>> {
        (**self).current_fence(name)
    }
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<String, (String, Instant)>,
    fences: HashMap<String, u64>,
}

/// In-process [`LockStore`]: locks between tasks of one process.
#[derive(Debug, Default)]
pub struct MemoryLockStore {
    state: Mutex<State>,
}

impl MemoryLockStore {
    /// No locks held.
    pub fn new() -> Self {
        MemoryLockStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LockStore for MemoryLockStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>>> {
        let now = Instant::now();
        let mut state = self.lock();
        let free = state.held.get(name).is_none_or(|(_, until)| *until <= now);
        let lease = free.then(|| {
            let token = super::random_token();
            state
                .held
                .insert(name.to_owned(), (token.clone(), now + ttl));
            let fence = state.fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            Lease {
                token,
                fence: *fence,
            }
        });
        Box::pin(std::future::ready(Ok(lease)))
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let mut state = self.lock();
        let renewed = match state.held.get_mut(name) {
            Some((t, until)) if t == token && *until > now => {
                *until = now + ttl;
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let ours = matches!(state.held.get(name), Some((t, _)) if t == token);
        if ours {
            state.held.remove(name);
        }
        Box::pin(std::future::ready(Ok(ours)))
    }

    fn current_fence<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64>> {
        let fence = self.lock().fences.get(name).copied().unwrap_or(0);
        Box::pin(std::future::ready(Ok(fence)))
    }
}
