//! Admission control: how many requests a copy takes at once, and what it
//! says to the rest.
//!
//! A copy offered more than it can take should serve what it took at full
//! speed and turn the rest away at once (503, `Retry-After: 1`, code
//! `http.overloaded`), so clients back off or try another copy instead of
//! queueing past their deadlines. [`Admission`] is that gate:
//!
//! - a *fixed* limit of requests in flight ([`Admission::fixed`]), or an
//!   *adaptive* one ([`Admission::adaptive`]) that follows latency: it grows
//!   while requests take about as long as they do unloaded and shrinks when
//!   they queue (TCP Vegas's rule, as in Netflix's `concurrency-limits`);
//! - optionally a *reserve* ([`Admission::reserve`]): a share of the limit
//!   that only requests continuing begun work may use, so that new work is
//!   shed first and what was begun is finished;
//! - counts to export ([`Admission::stats`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use catga_core::{Error, ErrorKind};

use crate::error::ApiError;

/// Admission control for `router`: at most `limit` requests are handled at
/// once across all its routes; one more is answered at once with 503,
/// `Retry-After: 1` and code `http.overloaded` (load shedding), so a copy
/// offered more than it can take serves what it took at full speed.
///
/// `Admission::fixed(limit).layer(router)` in one call; [`Admission`] also
/// has an adaptive limit and a reserve for begun work.
pub fn admission(router: Router, limit: usize) -> Router {
    Admission::fixed(limit).layer(router)
}

/// Like [`admission`], with part of the limit kept for work in progress.
///
/// A request that `starts_work` says begins new work (a shop's order
/// create, the first of its requests) is admitted only while fewer than
/// `limit - reserved` requests are in flight; any other (the next step of
/// work already begun) up to `limit`. Past either, the answer is the same
/// 503 as [`admission`]'s. Offered more than it can take, a copy then
/// finishes what it began before it takes more: the steps of begun work are
/// not shed behind new arrivals, so less of what was admitted is wasted.
///
/// The same as `Admission::fixed(limit).reserve(reserved, starts_work)`.
///
/// ```
/// use axum::{Router, routing::post};
/// let api = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .route("/orders/{id}/pay", post(|| async { "paying" }));
/// let api = catga_axum::admission_with_reserve(api, 32, 8, |req| req.uri().path() == "/orders");
/// # drop(api);
/// ```
pub fn admission_with_reserve(
    router: Router,
    limit: usize,
    reserved: usize,
    starts_work: fn(&Request) -> bool,
) -> Router {
    Admission::fixed(limit)
        .reserve(reserved, starts_work)
        .layer(router)
}

/// The answer to a request over an admission limit (503, `Retry-After: 1`).
fn shed() -> ApiError {
    ApiError(
        Error::new(
            ErrorKind::Overloaded,
            "this copy is at its limit of requests in flight; retry after a moment",
        )
        .with_code("http.overloaded"),
    )
}

/// An admission gate for one or more routers: a limit of requests in flight
/// (fixed or adaptive), an optional reserve for begun work, and its counts.
///
/// ```
/// use axum::{Router, routing::post};
/// use catga_axum::{AdaptiveLimit, Admission};
///
/// let api = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .route("/orders/{id}/pay", post(|| async { "paying" }));
/// // Between 4 and 64 in flight, following latency; a quarter of the
/// // current limit kept for orders already created.
/// let gate = Admission::adaptive(AdaptiveLimit::new().min(4).max(64))
///     .reserve_share(0.25, |req| req.uri().path() == "/orders");
/// let stats = gate.stats(); // to export: limit, in flight, admitted, shed
/// let api = gate.layer(api);
/// assert!(stats.limit() >= 4);
/// # drop(api);
/// ```
#[derive(Clone)]
pub struct Admission {
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limit", &self.gate.limit.load(Ordering::Relaxed))
            .field("adaptive", &self.gate.vegas.is_some())
            .field("reserve", &self.gate.reserve)
            .finish()
    }
}

impl Admission {
    /// At most `limit` requests in flight (at least 1).
    pub fn fixed(limit: usize) -> Self {
        Admission::with(limit.max(1), None)
    }

    /// A limit that follows latency, between `limit`'s bounds (see
    /// [`AdaptiveLimit`]).
    pub fn adaptive(limit: AdaptiveLimit) -> Self {
        let vegas = Vegas::new(&limit);
        Admission::with(vegas.current(), Some(vegas))
    }

    fn with(limit: usize, vegas: Option<Vegas>) -> Self {
        Admission {
            gate: Arc::new(Gate::new(limit, vegas, Reserve::None)),
        }
    }

    /// Keeps `reserved` of the limit for requests that do not start work:
    /// one that `starts_work` says begins new work is admitted only while
    /// fewer than `limit - reserved` are in flight (at least one). For an
    /// adaptive limit, [`Admission::reserve_share`] keeps the reserve in
    /// proportion as the limit moves.
    ///
    /// Set it before [`Admission::stats`], [`Admission::layer`] or a clone:
    /// after them it makes a gate of its own, which they do not see.
    #[must_use]
    pub fn reserve(self, reserved: usize, starts_work: fn(&Request) -> bool) -> Self {
        self.with_reserve(Reserve::Count(reserved, starts_work))
    }

    /// Keeps `share` (0 to 0.9) of the current limit for requests that do
    /// not start work (see [`Admission::reserve`], and set it as early).
    #[must_use]
    pub fn reserve_share(self, share: f64, starts_work: fn(&Request) -> bool) -> Self {
        let share = if share.is_finite() {
            share.clamp(0.0, 0.9)
        } else {
            0.0
        };
        self.with_reserve(Reserve::Share(share, starts_work))
    }

    /// The same limit with `reserve`: this gate if nothing shares it yet,
    /// otherwise a gate of its own (the shared one is left as it was).
    fn with_reserve(mut self, reserve: Reserve) -> Self {
        if let Some(gate) = Arc::get_mut(&mut self.gate) {
            gate.reserve = reserve;
            return self;
        }
        let vegas = self.gate.vegas.as_ref().map(|v| lock(v).clone());
        let limit = self.gate.limit.load(Ordering::Relaxed);
        Admission {
            gate: Arc::new(Gate::new(limit, vegas, reserve)),
        }
    }

    /// The counts of this gate, to export as metrics.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            gate: self.gate.clone(),
        }
    }

    /// Puts the gate in front of every route of `router`. Routers layered
    /// with clones of one `Admission` share its limit.
    pub fn layer(&self, router: Router) -> Router {
        let gate = self.gate.clone();
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let gate = gate.clone();
                async move {
                    let Some(entered) = gate.enter(&req) else {
                        gate.shed.fetch_add(1, Ordering::Relaxed);
                        return shed().into_response();
                    };
                    let response = next.run(req).await;
                    entered.done(response.status());
                    response
                }
            },
        ))
    }
}

/// What an [`Admission`] gate has done, read at any time (e.g. by a
/// `/metrics` renderer).
#[derive(Clone)]
pub struct AdmissionStats {
    gate: Arc<Gate>,
}

impl std::fmt::Debug for AdmissionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionStats")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("admitted", &self.admitted())
            .field("shed", &self.shed())
            .finish()
    }
}

impl AdmissionStats {
    /// The current limit of requests in flight.
    pub fn limit(&self) -> usize {
        self.gate.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight.load(Ordering::Relaxed)
    }

    /// Requests admitted since the gate was made.
    pub fn admitted(&self) -> u64 {
        self.gate.admitted.load(Ordering::Relaxed)
    }

    /// Requests turned away (503) since the gate was made.
    pub fn shed(&self) -> u64 {
        self.gate.shed.load(Ordering::Relaxed)
    }
}

/// The part of the limit kept for begun work.
#[derive(Debug, Clone, Copy)]
enum Reserve {
    None,
    Count(usize, fn(&Request) -> bool),
    Share(f64, fn(&Request) -> bool),
}

/// The shared state of an [`Admission`].
struct Gate {
    in_flight: AtomicUsize,
    /// The current limit (fixed, or the adaptive limit's last value).
    limit: AtomicUsize,
    vegas: Option<Mutex<Vegas>>,
    reserve: Reserve,
    admitted: AtomicU64,
    shed: AtomicU64,
}

impl Gate {
    fn new(limit: usize, vegas: Option<Vegas>, reserve: Reserve) -> Self {
        Gate {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            vegas: vegas.map(Mutex::new),
            reserve,
            admitted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// Admits `req` if its cap allows: the whole limit for continuing work,
    /// the limit less the reserve for new work.
    fn enter(&self, req: &Request) -> Option<Entered<'_>> {
        let limit = self.limit.load(Ordering::Relaxed).max(1);
        let cap = match self.reserve {
            Reserve::None => limit,
            Reserve::Count(n, starts) if starts(req) => limit.saturating_sub(n).max(1),
            Reserve::Share(s, starts) if starts(req) => limit
                .saturating_sub((limit as f64 * s).round() as usize)
                .max(1),
            Reserve::Count(..) | Reserve::Share(..) => limit,
        };
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some(Entered {
            gate: self,
            since: Instant::now(),
            in_flight: before + 1,
        })
    }
}

/// A request in flight; leaves on drop (a request whose client went away
/// leaves without a latency sample).
struct Entered<'a> {
    gate: &'a Gate,
    since: Instant,
    /// Requests in flight when this one was admitted, itself included.
    in_flight: usize,
}

impl Entered<'_> {
    /// The request was answered with `status`: a sample for an adaptive
    /// limit. A timeout (504) is a drop; a success (2xx, 3xx) a latency
    /// sample; any other answer says nothing about this copy's queue and is
    /// left out: a quick refusal (404, 422) is not the unloaded latency, and
    /// a 503 from what the request called (a saga backlog, a peer shedding)
    /// is that one's admission at work. Counting those 503s as drops pushed
    /// the limit down to its minimum whenever a saga backlog filled
    /// (measured in the sample: goodput at 4× 352 orders/s, against 489).
    fn done(self, status: StatusCode) {
        let Some(vegas) = &self.gate.vegas else {
            return;
        };
        let dropped = status == StatusCode::GATEWAY_TIMEOUT;
        if !(dropped || status.is_success() || status.is_redirection()) {
            return;
        }
        let rtt = self.since.elapsed();
        let mut vegas = lock(vegas);
        let limit = vegas.sample(rtt, self.in_flight, dropped);
        // Published under the lock: a sample finishing at the same time
        // cannot leave an older limit behind.
        self.gate.limit.store(limit, Ordering::Relaxed);
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The adaptive limit's state. `sample` cannot panic while holding it (it
/// only does arithmetic), so a poisoned lock is taken as it is.
fn lock(vegas: &Mutex<Vegas>) -> std::sync::MutexGuard<'_, Vegas> {
    vegas.lock().unwrap_or_else(|p| p.into_inner())
}

/// A concurrency limit that follows latency (see [`Admission::adaptive`]).
///
/// The rule is TCP Vegas's, as Netflix's `concurrency-limits` applies it to
/// servers: the shortest latency seen is taken as the unloaded one; from a
/// request's latency the number of requests queued is estimated as
/// `limit × (1 − unloaded / latency)`. Below about 3 × log10(limit) queued
/// the limit grows, above about 6 × log10(limit) it shrinks (log10 taken as
/// at least 1); a timeout (504) shrinks it too. Only 2xx and 3xx answers are
/// latency samples. While fewer than half the limit are in flight it neither
/// grows nor shrinks (there is no evidence either way). Now and then (every
/// 15 – 30 × limit successful answers) the unloaded latency is measured
/// afresh, so a lasting change in what a request costs is learnt.
///
/// It keeps a copy's own queue short, so admitted requests are answered
/// close to their unloaded latency; the price is throughput where latency
/// rises for reasons the limit cannot change (a machine shared with other
/// busy processes): see docs/benchmarks.md for both, measured.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveLimit {
    initial: usize,
    min: usize,
    max: usize,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        AdaptiveLimit::new()
    }
}

impl AdaptiveLimit {
    /// Starts at 20, between 4 and 256.
    pub fn new() -> Self {
        AdaptiveLimit {
            initial: 20,
            min: 4,
            max: 256,
        }
    }

    /// The limit to start with (kept within the bounds).
    #[must_use]
    pub fn initial(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The least it falls to (at least 1).
    #[must_use]
    pub fn min(mut self, n: usize) -> Self {
        self.min = n.max(1);
        self
    }

    /// The most it grows to (at least the minimum).
    #[must_use]
    pub fn max(mut self, n: usize) -> Self {
        self.max = n;
        self
    }
}

/// The state of an adaptive limit (TCP Vegas's rule).
#[derive(Debug, Clone)]
pub(crate) struct Vegas {
    limit: f64,
    min: f64,
    max: f64,
    /// The shortest latency seen since the last probe: the unloaded one.
    unloaded: Option<Duration>,
    /// Samples since the last probe.
    since_probe: usize,
    /// The next probe comes after `jitter × PROBE_EVERY × limit` samples
    /// (the limit then, not at the last probe); jitter in [0.5, 1).
    jitter: f64,
}

/// Requests between probes of the unloaded latency, per unit of limit.
const PROBE_EVERY: f64 = 30.0;

/// In [0.5, 1).
fn probe_jitter() -> f64 {
    0.5 + fastrand::f64() / 2.0
}

impl Vegas {
    pub(crate) fn new(l: &AdaptiveLimit) -> Self {
        let max = l.max.max(l.min) as f64;
        let min = l.min as f64;
        Vegas {
            limit: (l.initial as f64).clamp(min, max),
            min,
            max,
            unloaded: None,
            since_probe: 0,
            jitter: probe_jitter(),
        }
    }

    /// The limit now, rounded down.
    pub(crate) fn current(&self) -> usize {
        self.limit as usize
    }

    /// Whether the unloaded latency is due to be measured afresh.
    fn probe_due(&self) -> bool {
        self.since_probe as f64 >= self.jitter * PROBE_EVERY * self.limit
    }

    /// One answered request: its latency, the requests in flight when it
    /// was admitted (itself included), and whether it was a drop (a timeout).
    /// Returns the new limit.
    pub(crate) fn sample(&mut self, rtt: Duration, in_flight: usize, dropped: bool) -> usize {
        let limit = self.limit;
        let log = limit.log10().floor().max(1.0);
        if dropped {
            // However quick: a drop says the copy or what it calls is full.
            self.limit = (limit - log).clamp(self.min, self.max);
            return self.current();
        }
        if rtt.is_zero() {
            // No measurement (a clock that did not move).
            return self.current();
        }
        self.since_probe += 1;
        if self.probe_due() {
            // Measure the unloaded latency afresh from this request on;
            // jittered, so copies started together do not probe together.
            self.since_probe = 0;
            self.jitter = probe_jitter();
            self.unloaded = Some(rtt);
            return self.current();
        }
        let unloaded = *self.unloaded.get_or_insert(rtt);
        if rtt < unloaded {
            self.unloaded = Some(rtt);
            return self.current();
        }
        let next = if (in_flight as f64) * 2.0 < limit {
            // Not using what it has: no evidence either way.
            return self.current();
        } else {
            let queued = (limit * (1.0 - unloaded.as_secs_f64() / rtt.as_secs_f64())).ceil();
            if queued <= log {
                limit + 6.0 * log
            } else if queued < 3.0 * log {
                limit + log
            } else if queued > 6.0 * log {
                limit - log
            } else {
                limit
            }
        };
        self.limit = next.clamp(self.min, self.max);
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` samples alike; the limit after them.
    fn repeat(v: &mut Vegas, n: usize, rtt: Duration, in_flight: usize, dropped: bool) -> usize {
        for _ in 0..n {
            v.sample(rtt, in_flight, dropped);
        }
        v.current()
    }

    fn vegas(initial: usize) -> Vegas {
        let mut v = Vegas::new(&AdaptiveLimit::new().initial(initial).min(2).max(100));
        v.jitter = f64::INFINITY; // no probes in these tests
        v
    }

    #[test]
    fn grows_while_latency_stays_unloaded_and_the_limit_is_used() {
        let mut v = vegas(10);
        v.unloaded = Some(ms(10));
        for _ in 0..20 {
            v.sample(ms(10), v.current(), false);
        }
        assert!(v.current() > 40, "{}", v.current());
    }

    #[test]
    fn shrinks_when_requests_queue() {
        let mut v = vegas(50);
        v.unloaded = Some(ms(10));
        // Latency 4x unloaded with the limit in use: three quarters of the
        // limit are estimated queued, until that is 6 or fewer.
        for _ in 0..100 {
            v.sample(ms(40), v.current(), false);
        }
        assert_eq!(v.current(), 8);
    }

    #[test]
    fn holds_between_the_thresholds() {
        let mut v = vegas(10);
        v.unloaded = Some(ms(10));
        // 10 × (1 − 10/20) = 5 queued: between 3 and 6.
        assert_eq!(repeat(&mut v, 50, ms(20), 10, false), 10);
    }

    #[test]
    fn does_not_grow_when_not_used() {
        assert_eq!(repeat(&mut vegas(10), 50, ms(10), 2, false), 10);
    }

    #[test]
    fn drops_shrink_it_to_the_minimum_and_no_further() {
        assert_eq!(repeat(&mut vegas(10), 50, ms(10), 1, true), 2);
    }

    #[test]
    fn a_probe_relearns_the_unloaded_latency() {
        let mut v = vegas(50);
        v.unloaded = Some(ms(10));
        // Every request now costs 40 ms, unloaded or not (a slower
        // dependency): without a probe the limit would fall to 2.
        v.jitter = 0.0;
        v.sample(ms(40), 50, false);
        assert_eq!(v.unloaded, Some(ms(40)));
        v.jitter = f64::INFINITY;
        for _ in 0..20 {
            v.sample(ms(40), v.current(), false);
        }
        assert!(v.current() >= 50, "{}", v.current());
    }

    #[test]
    fn a_drop_lowers_the_limit_however_quick_and_no_time_is_no_sample() {
        let mut v = vegas(10);
        v.unloaded = Some(ms(10));
        assert_eq!(v.sample(ms(1), 10, true), 9);
        assert_eq!(v.unloaded, Some(ms(10)), "a drop is not a latency");
        v.sample(Duration::ZERO, 10, false);
        assert_eq!(v.unloaded, Some(ms(10)), "no time measured, no sample");
        assert_eq!(v.current(), 9);
    }

    #[test]
    fn probes_follow_the_limit_now() {
        let mut v = vegas(10);
        v.jitter = 1.0;
        v.limit = 20.0;
        v.since_probe = 299;
        assert!(!v.probe_due(), "30 × 20 samples, not 30 × 10");
        v.since_probe = 600;
        assert!(v.probe_due());
    }

    fn request(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn only_successes_and_drops_are_samples() {
        let a = Admission::adaptive(AdaptiveLimit::new().initial(10).min(2).max(100));
        let unloaded = || lock(a.gate.vegas.as_ref().unwrap()).unloaded;
        a.gate
            .enter(&request("/x"))
            .unwrap()
            .done(StatusCode::NOT_FOUND);
        a.gate
            .enter(&request("/x"))
            .unwrap()
            .done(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            unloaded(),
            None,
            "a quick refusal is not the unloaded latency"
        );
        a.gate.enter(&request("/x")).unwrap().done(StatusCode::OK);
        assert!(unloaded().is_some());
        a.gate
            .enter(&request("/x"))
            .unwrap()
            .done(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.stats().limit(), 10, "a 503 from behind is not a drop");
        a.gate
            .enter(&request("/x"))
            .unwrap()
            .done(StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(a.stats().limit(), 9, "a timeout is");
        assert_eq!(a.stats().in_flight(), 0);
    }

    #[test]
    fn a_reserve_share_follows_an_adaptive_limit() {
        let a = Admission::adaptive(AdaptiveLimit::new().initial(8).min(2).max(100))
            .reserve_share(0.25, |req| req.uri().path() == "/new");
        let fill = |path: &str| {
            let mut held = Vec::new();
            while let Some(e) = a.gate.enter(&request(path)) {
                held.push(e);
            }
            held.len()
        };
        assert_eq!(fill("/new"), 6, "8 less a quarter");
        assert_eq!(fill("/next"), 8);
        a.gate.limit.store(20, Ordering::Relaxed);
        assert_eq!(fill("/new"), 15, "20 less a quarter");
        assert_eq!(fill("/next"), 20);
    }

    #[test]
    fn bounds_hold() {
        let v = Vegas::new(&AdaptiveLimit::new().initial(1000).min(3).max(8));
        assert_eq!(v.current(), 8);
        let v = Vegas::new(&AdaptiveLimit::new().initial(0).min(0).max(0));
        assert_eq!(v.current(), 1, "at least one request is admitted");
    }
}
