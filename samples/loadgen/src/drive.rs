//! Driving orders through the HTTP API and auditing what happened; the
//! client's own overload manners ([`place`]: `Retry-After` with jitter, and
//! optionally a [`Throttle`] on new orders).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use shop_common::store::{
    LedgerEntry, OrderStore, PaymentStore, RedisStores, StockStore, count, net,
};
use uuid::Uuid;

/// How to drive.
#[derive(Debug, Clone)]
pub struct Load {
    /// Orders to place.
    pub orders: usize,
    /// Orders started per second.
    pub rate: f64,
    /// Units per order.
    pub qty: u32,
    /// How long one order may take to be accepted, retries included.
    pub submit_deadline: Duration,
    /// How long all orders may take to settle after the last was accepted.
    pub settle_deadline: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            orders: 300,
            rate: 50.0,
            qty: 1,
            submit_deadline: Duration::from_secs(90),
            settle_deadline: Duration::from_secs(180),
        }
    }
}

/// What one order did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The order id, when it was accepted.
    pub id: Option<Uuid>,
    /// From the first attempt to the payment being accepted.
    pub latency: Duration,
    /// When the payment was accepted (since the start of the run).
    pub accepted_at: Duration,
    /// HTTP attempts it took.
    pub attempts: u32,
}

/// The JSON report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Orders the tool tried to place.
    pub orders: usize,
    /// Orders accepted (created and payment started).
    pub accepted: usize,
    /// Accepted orders per second over the submit phase.
    pub throughput_per_sec: f64,
    /// Median client latency (create + pay), milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile client latency, milliseconds.
    pub latency_p99_ms: f64,
    /// Longest stretch without an accepted order, milliseconds.
    pub longest_gap_ms: f64,
    /// Accepted orders that are missing or never settled.
    pub orders_lost: usize,
    /// Orders charged or reserved more than once.
    pub orders_duplicated: usize,
    /// Paid orders whose stock or payment was never applied.
    pub effects_missing: usize,
    /// Orders whose money does not balance: charged − refunded must be the
    /// price for a paid order and 0 for any other.
    pub money_unbalanced: usize,
    /// Orders whose stock does not balance: reserved − released must be the
    /// quantity for a paid order and 0 for any other.
    pub stock_unbalanced: usize,
    /// Paid orders whose `OrderPaid` was not received exactly once, and other
    /// orders that received one.
    pub receipts_wrong: usize,
    /// The first few orders that failed the conservation audit, and why.
    pub conservation_detail: Vec<String>,
    /// Orders paid.
    pub paid: usize,
    /// Orders rejected (their stock and money given back).
    pub rejected: usize,
    /// Payment sagas not finished at the end.
    pub sagas_unfinished: usize,
    /// For each unfinished saga: its id, status, next step and last history line.
    pub unfinished_detail: Vec<String>,
    /// HTTP retries the tool needed (killed copies, failovers).
    pub retries: u64,
    /// Whether every check passed (nothing lost, duplicated or unfinished).
    pub ok: bool,
}

/// The HTTP client the tool drives with.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// What placing one order did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placed {
    /// The order, once created (even when its payment was never accepted).
    pub created: Option<Uuid>,
    /// Whether its payment was accepted (the saga started).
    pub accepted: bool,
    /// HTTP attempts it took.
    pub attempts: u32,
    /// Attempts answered 503 (a copy shedding load, or a service behind it
    /// overloaded).
    pub shed: u32,
    /// Attempts the client's own [`Throttle`] turned away before sending.
    pub throttled: u32,
    /// How long the attempts that succeeded took (the create and the pay the
    /// shop accepted, without the waits before them): the latency of what
    /// admission let in.
    pub served: Duration,
}

/// Places one order and pays it until accepted or `deadline`. A failed
/// attempt is tried again on the next copy with the same idempotency key,
/// after a wait drawn from a growing range (full jitter) and, for a 503,
/// capped by its `Retry-After`: a shedding service is not hammered.
///
/// With a `throttle`, a create may be turned away before it is sent while
/// the shop rejects most of what it is sent (see [`Throttle`]); it then waits
/// as after a 503. A pay is always sent.
pub async fn place(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    qty: u32,
    deadline: Instant,
    throttle: Option<&Throttle>,
) -> Placed {
    let key = uuid::Uuid::now_v7();
    let body = serde_json::json!({"customer": "loadgen", "sku": "book", "qty": qty, "unit_price_cents": 1000});
    let mut placed = Placed::default();
    let mut i = first;
    let mut backoff =
        catga::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // What to wait after a 503 or a throttled attempt: not before the
    // `Retry-After`, plus up to half of it again (jitter, so shed clients do
    // not all come back together).
    let after_shed = |after: Duration| after.mul_f64(1.0 + fastrand::f64() / 2.0);
    while Instant::now() < deadline {
        // Only new work is throttled: an order already created is paid
        // (throttling its pay would waste the create).
        if placed.created.is_none() && throttle.is_some_and(|t| !t.admit()) {
            placed.throttled += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(after_shed(Duration::from_secs(1)).min(left)).await;
            continue;
        }
        let url = &urls[i % urls.len()];
        i += 1;
        placed.attempts += 1;
        let sent = Instant::now();
        let step = match placed.created {
            None => {
                http.post(format!("{url}/orders"))
                    .header("idempotency-key", key.to_string())
                    .json(&body)
                    .send()
                    .await
            }
            Some(order) => http.post(format!("{url}/orders/{order}/pay")).send().await,
        };
        let mut wait = backoff.next_delay();
        if let Some(t) = throttle {
            // Accepted unless shed; no answer at all (a timeout, a refused
            // connection) is not accepted either.
            t.record(
                step.as_ref()
                    .is_ok_and(|res| res.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE),
            );
        }
        match step {
            Ok(res) if res.status().is_success() => {
                let json: Value = res.json().await.unwrap_or(Value::Null);
                placed.served += sent.elapsed();
                match placed.created {
                    None => placed.created = json["id"].as_str().and_then(|s| s.parse().ok()),
                    Some(_) => {
                        placed.accepted = true;
                        return placed;
                    }
                }
                backoff.reset();
                continue;
            }
            Ok(res) if res.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                placed.shed += 1;
                let after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(Duration::from_secs_f64);
                if let Some(after) = after {
                    wait = after_shed(after);
                }
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(left)).await;
    }
    placed
}

/// Places `load.orders` orders at `load.rate` across `urls`; `during` runs
/// concurrently (the chaos) and gets the elapsed fraction of the submit phase.
pub async fn run(
    urls: Vec<String>,
    load: &Load,
    during: impl std::future::Future<Output = ()>,
) -> (Vec<Outcome>, Duration) {
    let http = client();
    let start = Instant::now();
    let urls = Arc::new(urls);
    let mut tasks = Vec::with_capacity(load.orders);
    let submit = async {
        for n in 0..load.orders {
            let at = start + Duration::from_secs_f64(n as f64 / load.rate);
            tokio::time::sleep_until(at.into()).await;
            let (http, urls, qty) = (http.clone(), urls.clone(), load.qty);
            let deadline = Instant::now() + load.submit_deadline;
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                let placed = place(&http, &urls, n, qty, deadline, None).await;
                Outcome {
                    id: placed.created.filter(|_| placed.accepted),
                    latency: began.elapsed(),
                    accepted_at: start.elapsed(),
                    attempts: placed.attempts,
                }
            }));
        }
    };
    tokio::join!(submit, during);
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(o) = t.await {
            outcomes.push(o);
        }
    }
    let elapsed = start.elapsed();
    (outcomes, elapsed)
}

/// Waits for every accepted order to settle, then audits the stores.
pub async fn audit(
    urls: &[String],
    redis: &str,
    outcomes: &[Outcome],
    elapsed: Duration,
    load: &Load,
) -> Report {
    let http = client();
    let ids: Vec<Uuid> = outcomes.iter().filter_map(|o| o.id).collect();
    let mut status: HashMap<Uuid, String> = HashMap::new();
    let deadline = Instant::now() + load.settle_deadline;
    let mut i = 0usize;
    for id in &ids {
        loop {
            let url = &urls[i % urls.len()];
            i += 1;
            let got = match http.get(format!("{url}/orders/{id}")).send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            let s = got
                .as_ref()
                .and_then(|v| v["status"].as_str())
                .unwrap_or("missing")
                .to_owned();
            if s == "paid" || s == "rejected" || Instant::now() > deadline {
                status.insert(*id, s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A saga finishes a moment after its last step settles the order.
    let mut unfinished_detail = Vec::new();
    let sagas_unfinished =
        match catga::redis::RedisStore::connect(catga::redis::RedisOptions::new(redis)).await {
            Ok(store) => {
                use catga::saga::SagaStore;
                loop {
                    let ids = store.unfinished("orders.payment").await.unwrap_or_default();
                    if !ids.is_empty() && Instant::now() <= deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    for id in &ids {
                        unfinished_detail.push(match store.load(*id).await {
                            Ok(Some(s)) => format!(
                                "{id}: {:?} at step {}, last: {:?}",
                                s.status,
                                s.step,
                                s.history
                                    .last()
                                    .map(|h| format!("{} {} {}", h.step, h.what, h.detail))
                            ),
                            Ok(None) => format!("{id}: listed, no state"),
                            Err(e) => format!("{id}: {e}"),
                        });
                    }
                    break ids.len();
                }
            }
            Err(_) => usize::MAX,
        };
    let paid = status.values().filter(|s| *s == "paid").count();
    let rejected = status.values().filter(|s| *s == "rejected").count();
    let lost = status
        .values()
        .filter(|s| *s != "paid" && *s != "rejected")
        .count();
    // Receipts of `OrderPaid` arrive a moment after the order settles (outbox,
    // relay, JetStream): audit until clean or the settle deadline.
    let stores = RedisStores::connect(redis).await;
    let audit = loop {
        let audit = match &stores {
            Ok(s) => {
                let payments = PaymentStore::ledger(s).await.unwrap_or_default();
                let stock = StockStore::ledger(s).await.unwrap_or_default();
                let receipts = OrderStore::receipts(s).await.unwrap_or_default();
                Conservation::of(&ids, &status, &payments, &stock, &receipts, load.qty)
            }
            Err(e) => Conservation::unreadable(&e.to_string()),
        };
        if audit.is_clean() || Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.id.is_some())
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let mut times: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.id.is_some())
        .map(|o| o.accepted_at)
        .collect();
    times.sort();
    let mut gap = times.first().copied().unwrap_or(elapsed);
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    let retries: u64 = outcomes
        .iter()
        .map(|o| u64::from(o.attempts.saturating_sub(2)))
        .sum();
    let accepted = ids.len();
    Report {
        orders: outcomes.len(),
        accepted,
        throughput_per_sec: accepted as f64 / elapsed.as_secs_f64(),
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        longest_gap_ms: gap.as_secs_f64() * 1000.0,
        orders_lost: lost + (outcomes.len() - accepted),
        orders_duplicated: audit.duplicated,
        effects_missing: audit.missing,
        money_unbalanced: audit.money,
        stock_unbalanced: audit.stock,
        receipts_wrong: audit.receipts,
        conservation_detail: audit.detail.clone(),
        paid,
        rejected,
        sagas_unfinished,
        unfinished_detail,
        retries,
        ok: lost == 0 && accepted == outcomes.len() && audit.is_clean() && sagas_unfinished == 0,
    }
}

/// The price of every order the tool places, per unit.
const UNIT_PRICE_CENTS: i64 = 1000;

/// What the conservation audit found.
#[derive(Debug, Default)]
pub(crate) struct Conservation {
    pub(crate) duplicated: usize,
    pub(crate) missing: usize,
    pub(crate) money: usize,
    pub(crate) stock: usize,
    pub(crate) receipts: usize,
    pub(crate) detail: Vec<String>,
}

impl Conservation {
    /// Audits every accepted order against the ledgers: money and stock
    /// balance (the price and quantity when paid, 0 otherwise), each taken at
    /// most once, and `OrderPaid` received exactly once per paid order.
    pub(crate) fn of(
        ids: &[Uuid],
        status: &HashMap<Uuid, String>,
        payments: &[LedgerEntry],
        stock: &[LedgerEntry],
        receipts: &HashMap<Uuid, u64>,
        qty: u32,
    ) -> Conservation {
        let money = net(payments, "charge", "refund");
        let units = net(stock, "reserve", "release");
        let charges = count(payments, "charge");
        let reservations = count(stock, "reserve");
        let mut c = Conservation::default();
        for id in ids {
            let paid = status.get(id).map(String::as_str) == Some("paid");
            let price = if paid {
                UNIT_PRICE_CENTS * i64::from(qty)
            } else {
                0
            };
            let held = if paid { i64::from(qty) } else { 0 };
            let (m, u) = (
                money.get(id).copied().unwrap_or(0),
                units.get(id).copied().unwrap_or(0),
            );
            let (ch, re) = (
                charges.get(id).copied().unwrap_or(0),
                reservations.get(id).copied().unwrap_or(0),
            );
            let got = receipts.get(id).copied().unwrap_or(0);
            let mut why = Vec::new();
            if ch > 1 || re > 1 {
                c.duplicated += 1;
                why.push(format!("charged {ch}x, reserved {re}x"));
            }
            if paid && (ch == 0 || re == 0) {
                c.missing += 1;
                why.push("paid without a charge or reservation".to_owned());
            }
            if m != price {
                c.money += 1;
                why.push(format!("money {m} != {price}"));
            }
            if u != held {
                c.stock += 1;
                why.push(format!("stock {u} != {held}"));
            }
            if got != u64::from(paid) {
                c.receipts += 1;
                why.push(format!("OrderPaid received {got}x"));
            }
            if !why.is_empty() && c.detail.len() < 20 {
                let s = status.get(id).map_or("missing", String::as_str);
                c.detail.push(format!("{id} ({s}): {}", why.join("; ")));
            }
        }
        c
    }

    /// The audit of stores that could not be read.
    pub(crate) fn unreadable(why: &str) -> Conservation {
        Conservation {
            missing: usize::MAX,
            detail: vec![format!("cannot read the stores: {why}")],
            ..Conservation::default()
        }
    }

    pub(crate) fn is_clean(&self) -> bool {
        [
            self.duplicated,
            self.missing,
            self.money,
            self.stock,
            self.receipts,
        ]
        .iter()
        .all(|n| *n == 0)
    }
}

/// Client-side adaptive throttling (Google SRE book, "Handling Overload"):
/// over the last 10 seconds the client counts its requests (every attempt
/// sent, pays too, and every create it turned away) and those the shop
/// accepted (answered, and not with a 503), and turns a new create away
/// itself with probability `(requests − K × accepts) / (requests + 1)`,
/// `K` = 2. While the shop accepts at least half of what it is sent, nothing
/// is turned away; when it sheds most of it, the client stops paying (and
/// making the shop pay) for requests that would only be refused: a 503 is
/// cheap, not free, when thousands arrive a second.
#[derive(Debug)]
pub struct Throttle {
    start: Instant,
    /// Per second of the window: (second, requests, accepts).
    buckets: [std::sync::Mutex<(u64, u64, u64)>; WINDOW_SECS],
}

const WINDOW_SECS: usize = 10;
/// Accepts count this many times (SRE's `K`).
const K: f64 = 2.0;

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl Throttle {
    /// An empty window.
    pub fn new() -> Self {
        Throttle {
            start: Instant::now(),
            buckets: std::array::from_fn(|_| std::sync::Mutex::new((0, 0, 0))),
        }
    }

    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Adds to the current second's bucket.
    fn add(&self, requests: u64, accepts: u64) {
        self.add_at(self.second(), requests, accepts);
    }

    /// Adds to second `now`'s bucket (reset if it last held an older one).
    fn add_at(&self, now: u64, requests: u64, accepts: u64) {
        let mut b = self.buckets[now as usize % WINDOW_SECS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if b.0 != now {
            *b = (now, 0, 0);
        }
        b.1 += requests;
        b.2 += accepts;
    }

    /// Requests and accepts over the window.
    fn totals(&self) -> (f64, f64) {
        self.totals_at(self.second())
    }

    /// Requests and accepts over the window ending at second `now`.
    fn totals_at(&self, now: u64) -> (f64, f64) {
        self.buckets.iter().fold((0.0, 0.0), |(r, a), b| {
            let b = b.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_sub(b.0) < WINDOW_SECS as u64 {
                (r + b.1 as f64, a + b.2 as f64)
            } else {
                (r, a)
            }
        })
    }

    /// The chance a new attempt is turned away now.
    pub fn reject_probability(&self) -> f64 {
        let (requests, accepts) = self.totals();
        ((requests - K * accepts) / (requests + 1.0)).max(0.0)
    }

    /// Whether to send the next attempt; one turned away counts as a
    /// request not accepted.
    pub fn admit(&self) -> bool {
        let send = fastrand::f64() >= self.reject_probability();
        if !send {
            self.add(1, 0);
        }
        send
    }

    /// A sent attempt's answer: `accepted` unless it was a 503.
    pub fn record(&self, accepted: bool) {
        self.add(1, u64::from(accepted));
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;

    #[test]
    fn nothing_is_turned_away_while_half_is_accepted() {
        let t = Throttle::new();
        for i in 0..1000 {
            t.record(i % 2 == 0);
        }
        assert_eq!(t.reject_probability(), 0.0);
        assert!((0..1000).all(|_| t.admit()));
    }

    #[test]
    fn the_window_forgets_what_is_10_seconds_old() {
        let t = Throttle::new();
        t.add_at(0, 100, 0);
        t.add_at(5, 10, 10);
        assert_eq!(t.totals_at(9), (110.0, 10.0));
        assert_eq!(t.totals_at(10), (10.0, 10.0), "second 0 left the window");
        // Second 10 reuses second 0's bucket: it starts empty.
        t.add_at(10, 1, 1);
        assert_eq!(t.totals_at(10), (11.0, 11.0));
        assert_eq!(t.totals_at(20), (0.0, 0.0));
    }

    #[test]
    fn a_create_turned_away_counts_as_a_request_not_accepted() {
        let t = Throttle::new();
        for _ in 0..10 {
            t.record(false);
        }
        let turned_away = (0..100).filter(|_| !t.admit()).count();
        assert!(turned_away > 0);
        assert_eq!(t.totals(), ((10 + turned_away) as f64, 0.0));
    }

    #[test]
    fn most_is_turned_away_while_most_is_shed() {
        let t = Throttle::new();
        for i in 0..1000 {
            t.record(i % 10 == 0); // a tenth accepted
        }
        let p = t.reject_probability();
        assert!((0.75..0.85).contains(&p), "(1000 − 200) / 1001: {p}");
        let sent = (0..1000).filter(|_| t.admit()).count();
        assert!(sent < 400, "{sent} of 1000 sent");
    }
}
