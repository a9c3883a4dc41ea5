//! Where the shop keeps orders, stock and payments: a trait per store, in
//! memory for one process, Redis when the services run as a cluster.
//!
//! The stores show the two ways a Catga handler makes its effect happen once
//! together with its events, whatever crashes, timeouts and paused peers do:
//!
//! - **Unit of work** (orders, receipts): the handler reads the order, and
//!   stages the new state with the value it read as a condition
//!   ([`OrderStore::transition_staged`]); the idempotency behavior's completion
//!   applies it in the same Redis script that stores the response and appends
//!   the events (`OrderPaid`, `OrderCancelled`) to the outbox. State changed but
//!   events lost cannot happen, nor can two attempts both apply it.
//! - **Inbox** (payments, stock): the store itself records, per order, what was
//!   done and refuses to do it twice: a second charge of an order returns the
//!   first payment; a refund or release before the charge or reservation leaves
//!   a tombstone, so a charge that arrives late (a paused payment copy resumed)
//!   is refused instead of keeping money a compensated saga gave back.
//!
//! Every change of money or stock is appended to a ledger, never overwritten,
//! so the chaos run can audit conservation: per order, charged − refunded is
//! the price when paid and 0 otherwise, reserved − released the quantity when
//! paid and 0 otherwise.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use catga::redis::RedisStore;
use catga::store::UnitOfWork;
use catga::{Context, Error, ErrorKind, Result, ResultExt};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::messages::{Order, OrderStatus};

/// One line of a ledger: what happened to an order's money or stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// `charge`, `refund`, `reserve`, `release`, or `void` (an undo that found
    /// nothing to undo and blocks a late do).
    pub kind: String,
    /// The order.
    pub order: Uuid,
    /// Cents or units.
    pub amount: i64,
}

impl LedgerEntry {
    fn parse(line: &str) -> Option<LedgerEntry> {
        let mut parts = line.split(' ');
        Some(LedgerEntry {
            kind: parts.next()?.to_owned(),
            order: parts.next()?.parse().ok()?,
            amount: parts.next()?.parse().ok()?,
        })
    }

    #[cfg(test)]
    fn line(kind: &str, order: Uuid, amount: i64) -> String {
        format!("{kind} {order} {amount}")
    }
}

/// Orders.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Stores a new order unless one with its id exists (a retried create).
    async fn insert(&self, order: &Order) -> Result<()>;
    /// One order.
    async fn get(&self, id: Uuid) -> Result<Option<Order>>;
    /// Orders, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<Order>>;
    /// Applies `change` now if the order's status is one of `from`
    /// (compare-and-set, safe across copies). Fails with `orders.not_found` or
    /// `orders.invalid_state`.
    async fn transition(
        &self,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order>;
    /// Like [`OrderStore::transition`], but the write commits with the
    /// handler's completion (a unit of work staged in `ctx`; applied at once in
    /// memory). The message must be partitioned by the order id.
    async fn transition_staged(
        &self,
        ctx: &Context,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order>;
    /// Records a receipt of `OrderPaid` for `order` with the handler's
    /// completion (unit of work).
    async fn receipt(&self, ctx: &Context, order: Uuid) -> Result<()>;
    /// Receipts recorded per order (for the audit).
    async fn receipts(&self) -> Result<HashMap<Uuid, u64>>;
}

/// Stock per SKU and reservations per order.
#[async_trait]
pub trait StockStore: Send + Sync + 'static {
    /// Sets the stock of `sku` unless it is already set.
    async fn seed(&self, sku: &str, qty: u64) -> Result<()>;
    /// Units available.
    async fn available(&self, sku: &str) -> Result<u64>;
    /// Takes `qty` units for `order`, once: a repeat is a no-op. `false` when
    /// there are not enough, kept so that a repeat answers `false` too;
    /// `inventory.cancelled` when the order's stock was released (or voided)
    /// already.
    async fn reserve(&self, order: Uuid, sku: &str, qty: u32) -> Result<bool>;
    /// Gives an order's held units back, once; with nothing held, leaves a
    /// tombstone so a late reservation is refused.
    async fn release(&self, order: Uuid, sku: &str) -> Result<()>;
    /// Every reservation and release, in order (for the audit).
    async fn ledger(&self) -> Result<Vec<LedgerEntry>>;
}

/// Payments per order.
#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Charges `order` once and returns the payment id (a repeat returns the
    /// first one); `payment.cancelled` when it was refunded or voided already.
    async fn charge(&self, order: Uuid, amount_cents: u64) -> Result<Uuid>;
    /// Refunds an order's charge, once; with no charge, leaves a tombstone so
    /// a late charge is refused.
    async fn refund(&self, order: Uuid) -> Result<()>;
    /// Every charge and refund, in order (for the audit).
    async fn ledger(&self) -> Result<Vec<LedgerEntry>>;
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

fn cancelled(what: &str, order: Uuid) -> Error {
    Error::handler(
        format!("{what}.cancelled"),
        format!("order {order} was compensated already; nothing is taken"),
    )
    .with_retryable(false)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where an order's money or stock stands in the inbox of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Charged or reserved (with the amount).
    Taken(i64),
    /// Refunded or released (with the amount).
    GivenBack(i64),
    /// Undone before anything was taken: a late take is refused.
    Voided,
    /// Refused (not enough stock): a repeat is refused the same way.
    Refused,
}

/// In-memory stores for one process.
#[derive(Debug, Default)]
pub struct MemoryStores {
    orders: Mutex<HashMap<Uuid, Order>>,
    stock: Mutex<HashMap<String, u64>>,
    reservations: Mutex<HashMap<Uuid, (String, Done)>>,
    payments: Mutex<HashMap<Uuid, (Uuid, Done)>>,
    stock_ledger: Mutex<Vec<LedgerEntry>>,
    payment_ledger: Mutex<Vec<LedgerEntry>>,
    receipts: Mutex<HashMap<Uuid, u64>>,
}

fn entry(kind: &str, order: Uuid, amount: i64) -> LedgerEntry {
    LedgerEntry {
        kind: kind.to_owned(),
        order,
        amount,
    }
}

#[async_trait]
impl OrderStore for MemoryStores {
    async fn insert(&self, order: &Order) -> Result<()> {
        lock(&self.orders)
            .entry(order.id)
            .or_insert_with(|| order.clone());
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

    async fn transition_staged(
        &self,
        _ctx: &Context,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order> {
        // One process: nothing survives a crash to be inconsistent with.
        self.transition(id, from, change).await
    }

    async fn receipt(&self, _ctx: &Context, order: Uuid) -> Result<()> {
        *lock(&self.receipts).entry(order).or_default() += 1;
        Ok(())
    }

    async fn receipts(&self) -> Result<HashMap<Uuid, u64>> {
        Ok(lock(&self.receipts).clone())
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
        let mut reservations = lock(&self.reservations);
        match reservations.get(&order) {
            Some((_, Done::Taken(_))) => return Ok(true),
            Some((_, Done::Refused)) => return Ok(false),
            Some(_) => return Err(cancelled("inventory", order)),
            None => {}
        }
        let left = stock.entry(sku.to_owned()).or_insert(0);
        if *left < u64::from(qty) {
            reservations.insert(order, (sku.to_owned(), Done::Refused));
            return Ok(false);
        }
        *left -= u64::from(qty);
        reservations.insert(order, (sku.to_owned(), Done::Taken(i64::from(qty))));
        lock(&self.stock_ledger).push(entry("reserve", order, i64::from(qty)));
        Ok(true)
    }

    async fn release(&self, order: Uuid, sku: &str) -> Result<()> {
        let mut stock = lock(&self.stock);
        let mut reservations = lock(&self.reservations);
        match reservations.get(&order).cloned() {
            None => {
                reservations.insert(order, (sku.to_owned(), Done::Voided));
                lock(&self.stock_ledger).push(entry("void", order, 0));
            }
            Some((sku, Done::Taken(qty))) => {
                *stock.entry(sku.clone()).or_default() += qty.unsigned_abs();
                reservations.insert(order, (sku, Done::GivenBack(qty)));
                lock(&self.stock_ledger).push(entry("release", order, qty));
            }
            Some(_) => {}
        }
        Ok(())
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        Ok(lock(&self.stock_ledger).clone())
    }
}

#[async_trait]
impl PaymentStore for MemoryStores {
    async fn charge(&self, order: Uuid, amount_cents: u64) -> Result<Uuid> {
        let mut payments = lock(&self.payments);
        match payments.get(&order) {
            Some((id, Done::Taken(_))) => return Ok(*id),
            Some(_) => return Err(cancelled("payment", order)),
            None => {}
        }
        let id = catga::new_id();
        let amount = i64::try_from(amount_cents).unwrap_or(i64::MAX);
        payments.insert(order, (id, Done::Taken(amount)));
        lock(&self.payment_ledger).push(entry("charge", order, amount));
        Ok(id)
    }

    async fn refund(&self, order: Uuid) -> Result<()> {
        let mut payments = lock(&self.payments);
        match payments.get(&order).copied() {
            None => {
                payments.insert(order, (Uuid::nil(), Done::Voided));
                lock(&self.payment_ledger).push(entry("void", order, 0));
            }
            Some((id, Done::Taken(amount))) => {
                payments.insert(order, (id, Done::GivenBack(amount)));
                lock(&self.payment_ledger).push(entry("refund", order, amount));
            }
            Some(_) => {}
        }
        Ok(())
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        Ok(lock(&self.payment_ledger).clone())
    }
}

/// Redis stores, shared by every copy of every service.
#[derive(Clone)]
pub struct RedisStores {
    conn: ConnectionManager,
    /// Catga's store: where partitioned keys of a unit of work go.
    catga: RedisStore,
}

impl std::fmt::Debug for RedisStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStores")
    }
}

/// Orders: a hash per shard (field = order id, value = JSON), in the shard of
/// the order's partition, so a unit of work of a message about the order
/// commits with the handler's completion.
const ORDERS: &str = "shop:orders";
/// Receipts of `OrderPaid` per order, per shard, likewise.
const RECEIPTS: &str = "shop:receipts";
const RESERVATIONS: &str = "{shop:stock}:reservations";
const STOCK_LEDGER: &str = "{shop:stock}:ledger";
const PAYMENTS: &str = "{shop:payments}:state";
const PAYMENT_LEDGER: &str = "{shop:payments}:ledger";

const CAS: &str = r"
-- KEYS[1] orders hash; ARGV[1] order id; ARGV[2] expected JSON; ARGV[3] new JSON
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0";

const RESERVE: &str = r"
-- KEYS[1] stock of the sku; KEYS[2] reservations hash; KEYS[3] ledger
-- ARGV[1] order id; ARGV[2] qty; ARGV[3] sku
-- Returns 1 reserved (now or before), 0 not enough stock (now or before: a
-- refusal is kept, so a late repeat cannot reserve for an order whose saga
-- failed on it), -1 released already.
local done = redis.call('HGET', KEYS[2], ARGV[1])
if done then
  if string.sub(done, 1, 9) == 'reserved ' then return 1 end
  if string.sub(done, 1, 8) == 'refused ' then return 0 end
  return -1
end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[1], 'refused ' .. ARGV[3] .. ' 0')
  return 0
end
redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'reserved ' .. ARGV[3] .. ' ' .. ARGV[2])
redis.call('RPUSH', KEYS[3], 'reserve ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1";

const RELEASE: &str = r"
-- KEYS[1] stock of the sku; KEYS[2] reservations hash; KEYS[3] ledger
-- ARGV[1] order id; ARGV[2] sku
local done = redis.call('HGET', KEYS[2], ARGV[1])
if not done then
  redis.call('HSET', KEYS[2], ARGV[1], 'voided ' .. ARGV[2] .. ' 0')
  redis.call('RPUSH', KEYS[3], 'void ' .. ARGV[1] .. ' 0')
  return 0
end
local kind, sku, qty = string.match(done, '^(%a+) (%S+) (%d+)$')
if kind ~= 'reserved' then return 0 end
redis.call('INCRBY', KEYS[1], qty)
redis.call('HSET', KEYS[2], ARGV[1], 'released ' .. sku .. ' ' .. qty)
redis.call('RPUSH', KEYS[3], 'release ' .. ARGV[1] .. ' ' .. qty)
return 1";

const CHARGE: &str = r"
-- KEYS[1] payments hash; KEYS[2] ledger; ARGV[1] order id; ARGV[2] cents;
-- ARGV[3] a new payment id. Returns the payment id, or 'cancelled'.
local done = redis.call('HGET', KEYS[1], ARGV[1])
if not done then
  redis.call('HSET', KEYS[1], ARGV[1], 'charged ' .. ARGV[3] .. ' ' .. ARGV[2])
  redis.call('RPUSH', KEYS[2], 'charge ' .. ARGV[1] .. ' ' .. ARGV[2])
  return ARGV[3]
end
local kind, id = string.match(done, '^(%a+) (%S+)')
if kind == 'charged' then return id end
return 'cancelled'";

const REFUND: &str = r"
-- KEYS[1] payments hash; KEYS[2] ledger; ARGV[1] order id
local done = redis.call('HGET', KEYS[1], ARGV[1])
if not done then
  redis.call('HSET', KEYS[1], ARGV[1], 'voided - 0')
  redis.call('RPUSH', KEYS[2], 'void ' .. ARGV[1] .. ' 0')
  return 0
end
local kind, id, cents = string.match(done, '^(%a+) (%S+) (%d+)$')
if kind ~= 'charged' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'refunded ' .. id .. ' ' .. cents)
redis.call('RPUSH', KEYS[2], 'refund ' .. ARGV[1] .. ' ' .. cents)
return 1";

impl RedisStores {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<RedisStores> {
        let client = redis::Client::open(url).store_context("shop store")?;
        let conn = ConnectionManager::new(client)
            .await
            .store_context("shop store")?;
        let catga = RedisStore::connect(catga::redis::RedisOptions::new(url)).await?;
        Ok(RedisStores { conn, catga })
    }

    fn stock_key(sku: &str) -> String {
        format!("{{shop:stock}}:sku:{sku}")
    }

    fn orders_key(&self, id: Uuid) -> String {
        self.catga.partition_key(&id.to_string(), ORDERS)
    }

    async fn ledger_of(&self, key: &str) -> Result<Vec<LedgerEntry>> {
        let mut conn = self.conn.clone();
        let lines: Vec<String> = conn.lrange(key, 0, -1).await.store_context("shop store")?;
        Ok(lines.iter().filter_map(|l| LedgerEntry::parse(l)).collect())
    }

    async fn read_order(&self, id: Uuid) -> Result<Option<(String, Order)>> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn
            .hget(self.orders_key(id), id.to_string())
            .await
            .store_context("shop store")?;
        json.map(|j| decode(&j).map(|o| (j, o))).transpose()
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
        let _: bool = conn
            .hset_nx(
                self.orders_key(order.id),
                order.id.to_string(),
                encode(order)?,
            )
            .await
            .store_context("shop store")?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Order>> {
        Ok(self.read_order(id).await?.map(|(_, o)| o))
    }

    async fn list(&self, limit: usize) -> Result<Vec<Order>> {
        let mut conn = self.conn.clone();
        let mut orders = Vec::new();
        for key in self.catga.shard_keys(ORDERS) {
            let all: HashMap<String, String> =
                conn.hgetall(key).await.store_context("shop store")?;
            for json in all.values() {
                orders.push(decode(json)?);
            }
        }
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
            let (json, mut order) = self.read_order(id).await?.ok_or_else(|| not_found(id))?;
            if !from.contains(&order.status) {
                return Err(invalid_state(&order, from));
            }
            change(&mut order);
            let set: i64 = script
                .key(self.orders_key(id))
                .arg(id.to_string())
                .arg(&json)
                .arg(encode(&order)?)
                .invoke_async(&mut conn)
                .await
                .store_context("shop store")?;
            if set == 1 {
                return Ok(order);
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("order {id} keeps changing; try again"),
        ))
    }

    async fn transition_staged(
        &self,
        ctx: &Context,
        id: Uuid,
        from: &[OrderStatus],
        change: &(dyn for<'o> Fn(&'o mut Order) + Sync),
    ) -> Result<Order> {
        let (json, mut order) = self.read_order(id).await?.ok_or_else(|| not_found(id))?;
        if !from.contains(&order.status) {
            return Err(invalid_state(&order, from));
        }
        change(&mut order);
        let key = self.orders_key(id);
        ctx.stage(
            UnitOfWork::new()
                .expect_field(key.clone(), id.to_string(), Some(json))
                .hash_set(key, id.to_string(), encode(&order)?),
        )?;
        Ok(order)
    }

    async fn receipt(&self, ctx: &Context, order: Uuid) -> Result<()> {
        let key = self.catga.partition_key(&order.to_string(), RECEIPTS);
        ctx.stage(UnitOfWork::new().hash_increment(key, order.to_string(), 1))
    }

    async fn receipts(&self) -> Result<HashMap<Uuid, u64>> {
        let mut conn = self.conn.clone();
        let mut out = HashMap::new();
        for key in self.catga.shard_keys(RECEIPTS) {
            let raw: HashMap<String, u64> = conn.hgetall(key).await.store_context("shop store")?;
            out.extend(
                raw.into_iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v))),
            );
        }
        Ok(out)
    }
}

#[async_trait]
impl StockStore for RedisStores {
    async fn seed(&self, sku: &str, qty: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: bool = conn
            .set_nx(Self::stock_key(sku), qty)
            .await
            .store_context("shop store")?;
        Ok(())
    }

    async fn available(&self, sku: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = conn
            .get(Self::stock_key(sku))
            .await
            .store_context("shop store")?;
        Ok(n.unwrap_or(0))
    }

    async fn reserve(&self, order: Uuid, sku: &str, qty: u32) -> Result<bool> {
        let mut conn = self.conn.clone();
        let done: i64 = redis::Script::new(RESERVE)
            .key(Self::stock_key(sku))
            .key(RESERVATIONS)
            .key(STOCK_LEDGER)
            .arg(order.to_string())
            .arg(qty)
            .arg(sku)
            .invoke_async(&mut conn)
            .await
            .store_context("shop store")?;
        match done {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(cancelled("inventory", order)),
        }
    }

    async fn release(&self, order: Uuid, sku: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(Self::stock_key(sku))
            .key(RESERVATIONS)
            .key(STOCK_LEDGER)
            .arg(order.to_string())
            .arg(sku)
            .invoke_async(&mut conn)
            .await
            .store_context("shop store")?;
        Ok(())
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        self.ledger_of(STOCK_LEDGER).await
    }
}

#[async_trait]
impl PaymentStore for RedisStores {
    async fn charge(&self, order: Uuid, amount_cents: u64) -> Result<Uuid> {
        let mut conn = self.conn.clone();
        let id: String = redis::Script::new(CHARGE)
            .key(PAYMENTS)
            .key(PAYMENT_LEDGER)
            .arg(order.to_string())
            .arg(amount_cents)
            .arg(catga::new_id().to_string())
            .invoke_async(&mut conn)
            .await
            .store_context("shop store")?;
        id.parse().map_err(|_| cancelled("payment", order))
    }

    async fn refund(&self, order: Uuid) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(REFUND)
            .key(PAYMENTS)
            .key(PAYMENT_LEDGER)
            .arg(order.to_string())
            .invoke_async(&mut conn)
            .await
            .store_context("shop store")?;
        Ok(())
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        self.ledger_of(PAYMENT_LEDGER).await
    }
}

/// Per order: the sum of the ledger's entries of kind `plus` minus those of
/// kind `minus`.
pub fn net(ledger: &[LedgerEntry], plus: &str, minus: &str) -> HashMap<Uuid, i64> {
    let mut out: HashMap<Uuid, i64> = HashMap::new();
    for e in ledger {
        let sign = if e.kind == plus {
            1
        } else if e.kind == minus {
            -1
        } else {
            continue;
        };
        *out.entry(e.order).or_default() += sign * e.amount;
    }
    out
}

/// Per order: how many entries of kind `kind` the ledger holds.
pub fn count(ledger: &[LedgerEntry], kind: &str) -> HashMap<Uuid, u64> {
    let mut out: HashMap<Uuid, u64> = HashMap::new();
    for e in ledger.iter().filter(|e| e.kind == kind) {
        *out.entry(e.order).or_default() += 1;
    }
    out
}

/// A check every [`StockStore`] must pass, for the tests of each one: a
/// reservation refused for want of stock stays refused. A late repeat of the
/// saga step (its saga failed on the refusal and did not compensate it)
/// must not take stock once some is back: `ReserveStock` is not declared
/// idempotent, so the store answers repeats itself and keeps the refusal.
///
/// Needs `sku` seeded with 3 and nothing reserved; panics on a breach.
pub async fn refusal_stands(stock: &dyn StockStore, sku: &str) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(stock.reserve(b, sku, 2).await.unwrap());
    assert!(!stock.reserve(a, sku, 2).await.unwrap(), "1 left of 3");
    stock.release(b, sku).await.unwrap();
    assert!(
        !stock.reserve(a, sku, 2).await.unwrap(),
        "a repeat of a refused reservation is refused, stock or not"
    );
    assert_eq!(stock.available(sku).await.unwrap(), 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_lines_round_trip_and_sum_per_order() {
        let order = Uuid::now_v7();
        let lines = [
            LedgerEntry::line("charge", order, 1500),
            LedgerEntry::line("refund", order, 1500),
            "garbage".to_owned(),
        ];
        let ledger: Vec<_> = lines.iter().filter_map(|l| LedgerEntry::parse(l)).collect();
        assert_eq!(ledger.len(), 2);
        assert_eq!(net(&ledger, "charge", "refund")[&order], 0);
        assert_eq!(count(&ledger, "charge")[&order], 1);
    }

    /// [`refusal_stands`] in memory (the order-service tests run it on
    /// Redis).
    #[tokio::test]
    async fn a_refused_reservation_stays_refused_in_memory() {
        let s = MemoryStores::default();
        s.seed("rare", 3).await.unwrap();
        refusal_stands(&s, "rare").await;
    }

    #[tokio::test]
    async fn a_late_charge_after_a_refund_is_refused_in_memory() {
        let s = MemoryStores::default();
        let order = Uuid::now_v7();
        s.refund(order).await.unwrap();
        let e = s.charge(order, 100).await.unwrap_err();
        assert_eq!(e.code(), Some("payment.cancelled"));
        let other = Uuid::now_v7();
        let first = s.charge(other, 100).await.unwrap();
        assert_eq!(s.charge(other, 100).await.unwrap(), first, "charged once");
        s.refund(other).await.unwrap();
        s.refund(other).await.unwrap();
        let ledger = PaymentStore::ledger(&s).await.unwrap();
        assert_eq!(net(&ledger, "charge", "refund")[&other], 0);
        assert_eq!(ledger.len(), 3, "void, charge, one refund");
    }
}
