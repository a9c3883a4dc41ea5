//! What the saga coordinator remembers between its listings: the sagas it
//! drove (so a late hand-over is not driven twice) and those resting after
//! their driver stopped on an error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use uuid::Uuid;

use super::starts::MAX_HANDED;
use crate::backoff::Backoff;

/// The sagas this coordinator has driven, whatever came of it, the latest
/// few thousand: a start's state handed over after a listing drove its saga
/// may be older than the store's and must not be driven (the listing finds
/// the saga if it is unfinished).
#[derive(Default)]
pub(super) struct Driven {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

impl Driven {
    const KEPT: usize = 4 * MAX_HANDED;

    pub(super) fn insert(&mut self, id: Uuid) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > Self::KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    pub(super) fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }
}

/// Sagas whose driver stopped on an error (a store away, data this version
/// cannot decode): each rests before it is driven again, twice as long each
/// time up to 10 s (so it goes on within about 10 s of its store coming
/// back), and one that cannot go on is not loaded and logged at every
/// listing.
/// Each entry: when its rest ends, and how many stops in a row it counts.
#[derive(Default)]
pub(super) struct Resting(HashMap<Uuid, (tokio::time::Instant, u32)>);

impl Resting {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(10);

    /// The rest after `stops` stops in a row.
    fn rest(stops: u32) -> Duration {
        Backoff::new(Self::FIRST, Self::LONGEST).cap(stops)
    }

    /// Saga `id` stopped on an error: it rests, twice as long as last time
    /// unless its last rest ended long ago (it went on for a while since).
    pub(super) fn paused(&mut self, id: Uuid) {
        let now = tokio::time::Instant::now();
        let stops = match self.0.get(&id) {
            Some((until, stops)) if *until + Self::LONGEST > now => stops.saturating_add(1),
            _ => 1,
        };
        let until = now + Self::rest(stops).mul_f64(0.5 + fastrand::f64() / 2.0);
        self.0.insert(id, (until, stops));
    }

    /// Saga `id` went on (or ended): no more rest.
    pub(super) fn went_on(&mut self, id: Uuid) {
        self.0.remove(&id);
    }

    /// Whether saga `id` is resting now.
    pub(super) fn resting(&self, id: &Uuid) -> bool {
        self.0
            .get(id)
            .is_some_and(|(until, _)| *until > tokio::time::Instant::now())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets sagas no longer listed (finished elsewhere).
    pub(super) fn keep_listed(&mut self, listed: &HashSet<Uuid>) {
        self.0.retain(|id, _| listed.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[tokio::test(start_paused = true)]
    async fn a_rest_doubles_while_failures_follow_and_starts_over_after_a_while() {
        let id = Uuid::now_v7();
        let mut resting = Resting::default();
        let rest = |r: &Resting| Resting::rest(r.0[&id].1);
        resting.paused(id);
        assert_eq!(rest(&resting), Resting::FIRST);
        for expected in [400, 800, 1600, 3200, 6400, 10_000, 10_000] {
            tokio::time::advance(rest(&resting)).await;
            resting.paused(id);
            assert_eq!(rest(&resting), Duration::from_millis(expected));
        }
        assert!(resting.resting(&id));
        // Going on for longer than the longest rest: the next failure starts
        // from the first rest again.
        tokio::time::advance(Resting::LONGEST * 3).await;
        assert!(!resting.resting(&id));
        resting.paused(id);
        assert_eq!(rest(&resting), Resting::FIRST);
        resting.went_on(id);
        assert!(resting.is_empty());
    }
}
