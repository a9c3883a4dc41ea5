//! Where the shop keeps orders, stock and payments: a trait per store, in
//! memory for one process, Redis when the services run as a cluster.
//!
//! Each store also counts how often an effect was *applied* (a reservation, a
//! charge) per order, so the chaos run can prove that every effect happened
//! exactly once. The stores do not deduplicate by themselves: that is the job of
//! Catga's idempotency behavior in front of the handlers.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use catga::{Error, ErrorKind, Result};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::messages::{Order, OrderStatus};

/// Orders.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Stores a new order.
    async fn insert(&self, order: &Order) -> Result<()>;
    /// One order.
    async fn get(&self, id: Uuid) -> Result<Option<Order>>;
    /// Orders, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<Order>>;
    /// Applies `change` if the order's status is one of `from`: compare-and-set,
    /// safe across copies. Fails with `orders.not_found` or `orders.invalid_state`.
    async fn transition(
        &self,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order>;
}

/// Stock per SKU and reservations per order.
#[async_trait]
pub trait StockStore: Send + Sync + 'static {
    /// Sets the stock of `sku` unless it is already set.
    async fn seed(&self, sku: &str, qty: u64) -> Result<()>;
    /// Units available.
    async fn available(&self, sku: &str) -> Result<u64>;
    /// Takes `qty` units for `order`; `false` when there are not enough.
    async fn reserve(&self, order: Uuid, sku: &str, qty: u32) -> Result<bool>;
    /// Gives an order's held units back (no-op when none are held).
    async fn release(&self, order: Uuid, sku: &str) -> Result<()>;
    /// Reservations applied per order (for the audit).
    async fn applied(&self) -> Result<HashMap<Uuid, u64>>;
}

/// Payments per order.
#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Records a charge and returns the payment id.
    async fn charge(&self, order: Uuid, amount_cents: u64) -> Result<Uuid>;
    /// Refunds an order's charge (no-op when none or already refunded).
    async fn refund(&self, order: Uuid) -> Result<()>;
    /// Charges applied per order (for the audit).
    async fn applied(&self) -> Result<HashMap<Uuid, u64>>;
}

/// The error of an order that does not exist (`orders.not_found`, HTTP 404).
pub fn not_found(id: Uuid) -> Error {
    Error::handler("orders.not_found", format!("no order {id}")).with_retryable(false)
}

fn invalid_state(order: &Order, from: &[OrderStatus]) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "order {} is {:?}; this needs one of {from:?}",
            order.id, order.status
        ),
    )
    .with_code("orders.invalid_state")
}

fn redis_error(e: redis::RedisError) -> Error {
    Error::store(format!("shop store: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-memory stores for one process.
#[derive(Debug, Default)]
pub struct MemoryStores {
    orders: Mutex<HashMap<Uuid, Order>>,
    stock: Mutex<HashMap<String, u64>>,
    held: Mutex<HashMap<Uuid, (String, u32)>>,
    reserved: Mutex<HashMap<Uuid, u64>>,
    payments: Mutex<HashMap<Uuid, (Uuid, bool)>>,
    charged: Mutex<HashMap<Uuid, u64>>,
}

#[async_trait]
impl OrderStore for MemoryStores {
    async fn insert(&self, order: &Order) -> Result<()> {
        lock(&self.orders).insert(order.id, order.clone());
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Order>> {
        Ok(lock(&self.orders).get(&id).cloned())
    }

    async fn list(&self, limit: usize) -> Result<Vec<Order>> {
        let mut all: Vec<Order> = lock(&self.orders).values().cloned().collect();
        all.sort_by_key(|o| std::cmp::Reverse(o.id));
        all.truncate(limit);
        Ok(all)
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order> {
        let mut orders = lock(&self.orders);
        let order = orders.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !from.contains(&order.status) {
            return Err(invalid_state(order, from));
        }
        change(order);
        Ok(order.clone())
    }
}

#[async_trait]
impl StockStore for MemoryStores {
    async fn seed(&self, sku: &str, qty: u64) -> Result<()> {
        lock(&self.stock).entry(sku.to_owned()).or_insert(qty);
        Ok(())
    }

    async fn available(&self, sku: &str) -> Result<u64> {
        Ok(lock(&self.stock).get(sku).copied().unwrap_or(0))
    }

    async fn reserve(&self, order: Uuid, sku: &str, qty: u32) -> Result<bool> {
        let mut stock = lock(&self.stock);
        let left = stock.entry(sku.to_owned()).or_insert(0);
        if *left < u64::from(qty) {
            return Ok(false);
        }
        *left -= u64::from(qty);
        lock(&self.held).insert(order, (sku.to_owned(), qty));
        *lock(&self.reserved).entry(order).or_default() += 1;
        Ok(true)
    }

    async fn release(&self, order: Uuid, _sku: &str) -> Result<()> {
        let mut stock = lock(&self.stock);
        if let Some((sku, qty)) = lock(&self.held).remove(&order) {
            *stock.entry(sku).or_default() += u64::from(qty);
        }
        Ok(())
    }

    async fn applied(&self) -> Result<HashMap<Uuid, u64>> {
        Ok(lock(&self.reserved).clone())
    }
}

#[async_trait]
impl PaymentStore for MemoryStores {
    async fn charge(&self, order: Uuid, _amount_cents: u64) -> Result<Uuid> {
        let id = catga::new_id();
        lock(&self.payments).insert(order, (id, false));
        *lock(&self.charged).entry(order).or_default() += 1;
        Ok(id)
    }

    async fn refund(&self, order: Uuid) -> Result<()> {
        if let Some(p) = lock(&self.payments).get_mut(&order) {
            p.1 = true;
        }
        Ok(())
    }

    async fn applied(&self) -> Result<HashMap<Uuid, u64>> {
        Ok(lock(&self.charged).clone())
    }
}

/// Redis stores, shared by every copy of every service.
#[derive(Clone)]
pub struct RedisStores {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStores")
    }
}

const ORDERS: &str = "shop:orders";
const RESERVATIONS: &str = "shop:reservations";
const RESERVED: &str = "shop:reservations:applied";
const PAYMENTS: &str = "shop:payments";
const CHARGED: &str = "shop:payments:applied";

const CAS: &str = r"
-- KEYS[1] orders hash; ARGV[1] order id; ARGV[2] expected JSON; ARGV[3] new JSON
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0";

const RESERVE: &str = r"
-- KEYS[1] stock key; KEYS[2] reservations hash; KEYS[3] applied counts
-- ARGV[1] order id; ARGV[2] qty; ARGV[3] sku
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < tonumber(ARGV[2]) then return 0 end
redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return 1";

const RELEASE: &str = r"
-- KEYS[1] stock key; KEYS[2] reservations hash; ARGV[1] order id
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
local qty = string.match(held, ' (%d+)$')
redis.call('INCRBY', KEYS[1], qty)
redis.call('HDEL', KEYS[2], ARGV[1])
return 1";

impl RedisStores {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<RedisStores> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let conn = ConnectionManager::new(client).await.map_err(redis_error)?;
        Ok(RedisStores { conn })
    }

    fn stock_key(sku: &str) -> String {
        format!("shop:stock:{sku}")
    }

    async fn counts(&self, key: &str) -> Result<HashMap<Uuid, u64>> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, u64> = conn.hgetall(key).await.map_err(redis_error)?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect())
    }
}

fn decode(json: &str) -> Result<Order> {
    serde_json::from_str(json).map_err(|e| Error::store(format!("corrupt order record: {e}")))
}

fn encode(order: &Order) -> Result<String> {
    serde_json::to_string(order).map_err(|e| Error::codec(e.to_string()))
}

#[async_trait]
impl OrderStore for RedisStores {
    async fn insert(&self, order: &Order) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(ORDERS, order.id.to_string(), encode(order)?)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Order>> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn
            .hget(ORDERS, id.to_string())
            .await
            .map_err(redis_error)?;
        json.as_deref().map(decode).transpose()
    }

    async fn list(&self, limit: usize) -> Result<Vec<Order>> {
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = conn.hgetall(ORDERS).await.map_err(redis_error)?;
        let mut orders = all
            .values()
            .map(|j| decode(j))
            .collect::<Result<Vec<_>>>()?;
        orders.sort_by_key(|o| std::cmp::Reverse(o.id));
        orders.truncate(limit);
        Ok(orders)
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(CAS);
        for _ in 0..32 {
            let json: Option<String> = conn
                .hget(ORDERS, id.to_string())
                .await
                .map_err(redis_error)?;
            let json = json.ok_or_else(|| not_found(id))?;
            let mut order = decode(&json)?;
            if !from.contains(&order.status) {
                return Err(invalid_state(&order, from));
            }
            change(&mut order);
            let set: i64 = script
                .key(ORDERS)
                .arg(id.to_string())
                .arg(&json)
                .arg(encode(&order)?)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if set == 1 {
                return Ok(order);
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("order {id} keeps changing; try again"),
        ))
    }
}

#[async_trait]
impl StockStore for RedisStores {
    async fn seed(&self, sku: &str, qty: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: bool = conn
            .set_nx(Self::stock_key(sku), qty)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn available(&self, sku: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = conn.get(Self::stock_key(sku)).await.map_err(redis_error)?;
        Ok(n.unwrap_or(0))
    }

    async fn reserve(&self, order: Uuid, sku: &str, qty: u32) -> Result<bool> {
        let mut conn = self.conn.clone();
        let done: i64 = redis::Script::new(RESERVE)
            .key(Self::stock_key(sku))
            .key(RESERVATIONS)
            .key(RESERVED)
            .arg(order.to_string())
            .arg(qty)
            .arg(sku)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(done == 1)
    }

    async fn release(&self, order: Uuid, sku: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(Self::stock_key(sku))
            .key(RESERVATIONS)
            .arg(order.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn applied(&self) -> Result<HashMap<Uuid, u64>> {
        self.counts(RESERVED).await
    }
}

#[async_trait]
impl PaymentStore for RedisStores {
    async fn charge(&self, order: Uuid, amount_cents: u64) -> Result<Uuid> {
        let mut conn = self.conn.clone();
        let id = catga::new_id();
        let record = format!("{id} {amount_cents} charged");
        let _: () = redis::pipe()
            .atomic()
            .hset(PAYMENTS, order.to_string(), record)
            .ignore()
            .hincr(CHARGED, order.to_string(), 1)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(id)
    }

    async fn refund(&self, order: Uuid) -> Result<()> {
        let mut conn = self.conn.clone();
        let record: Option<String> = conn
            .hget(PAYMENTS, order.to_string())
            .await
            .map_err(redis_error)?;
        if let Some(record) = record {
            let refunded = record.replace(" charged", " refunded");
            let _: () = conn
                .hset(PAYMENTS, order.to_string(), refunded)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn applied(&self) -> Result<HashMap<Uuid, u64>> {
        self.counts(CHARGED).await
    }
}
