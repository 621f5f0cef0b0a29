//! The waiting room of one model class's organisation pool, on one replica.
//!
//! Calls that find no room wait here instead of failing, up to their tenant's `max_wait_ms`.
//! Order: higher priority class first; within a class, start-time fair queueing: each
//! tenant's calls get a start tag `max(V, last finish of this tenant)` and a finish tag
//! `start + cost / weight`, and the smallest start tag is served next (V advances to the tag
//! served). A tenant with a deep backlog therefore pushes only its own tags into the future:
//! a light tenant's next call is tagged at about V and overtakes the backlog, and two
//! backlogged tenants alternate in proportion to their weights.
//!
//! Only the head waiter tries the backend, so the pool's refill goes to the head rather than
//! to whichever waiter's timer fires first. The head is woken by its own `Notify` when it
//! becomes the head, and when room may have appeared early (a settlement refunded tokens).

use foldhash::HashMap;
use sluice_config::Priority;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// Fixed-point scale of the virtual time, so that `cost / weight` keeps precision.
const VSCALE: u128 = 1 << 16;

/// A waiter's place: priority class first (higher served first), then start tag, then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    rank: std::cmp::Reverse<Priority>,
    start: u128,
    seq: u64,
}

impl Place {
    /// The priority class of this place.
    pub fn priority(&self) -> Priority {
        self.rank.0
    }
}

#[derive(Default)]
struct State {
    waiters: BTreeMap<Place, Arc<Notify>>,
    /// Virtual time per priority class.
    vtime: HashMap<Priority, u128>,
    /// Finish tag of each tenant's latest call.
    finish: HashMap<Arc<str>, u128>,
    seq: u64,
}

/// One class's queue.
#[derive(Default)]
pub struct FairQueue {
    state: Mutex<State>,
}

impl FairQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether anyone of priority `p` or higher is waiting (then a newcomer of class `p`
    /// must queue behind them rather than try the pool directly).
    pub fn busy_at_or_above(&self, p: Priority) -> bool {
        self.lock()
            .waiters
            .keys()
            .next()
            .is_some_and(|w| w.priority() >= p)
    }

    /// Number of waiters.
    pub fn len(&self) -> usize {
        self.lock().waiters.len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Join the queue. `cost` is the call's size in tokens (any consistent unit), `weight`
    /// its tenant's weight. A call that rejoins (after stepping aside) passes its old place.
    pub fn join(
        &self,
        tenant: &Arc<str>,
        priority: Priority,
        cost: u64,
        weight: u32,
        rejoin: Option<Place>,
    ) -> (Place, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        let mut st = self.lock();
        let place = match rejoin {
            Some(p) => p,
            None => {
                let v = st.vtime.get(&priority).copied().unwrap_or(0);
                let last = st.finish.get(tenant).copied().unwrap_or(0);
                let start = v.max(last);
                let finish = start + u128::from(cost.max(1)) * VSCALE / u128::from(weight.max(1));
                st.finish.insert(tenant.clone(), finish);
                st.seq += 1;
                Place {
                    rank: std::cmp::Reverse(priority),
                    start,
                    seq: st.seq,
                }
            }
        };
        st.waiters.insert(place, notify.clone());
        if st.waiters.keys().next() == Some(&place) {
            // A new head (first waiter, or one of a higher class): it must not wait for a
            // wake-up that nobody will send.
            notify.notify_one();
        }
        (place, notify)
    }

    /// Whether `place` is at the head.
    pub fn is_head(&self, place: &Place) -> bool {
        self.lock().waiters.keys().next() == Some(place)
    }

    /// Leave the queue (served, refused, timed out or stepping aside). When served, virtual
    /// time advances to the call's start tag. The new head, if any, is woken.
    pub fn leave(&self, place: &Place, served: bool) {
        let mut st = self.lock();
        st.waiters.remove(place);
        if served {
            let v = st.vtime.entry(place.priority()).or_insert(0);
            *v = (*v).max(place.start);
        }
        if let Some(n) = st.waiters.values().next() {
            n.notify_one();
        }
        if st.waiters.is_empty() {
            // Forget finish tags once nobody waits, so the map stays bounded by the number of
            // tenants that are waiting, and a long-idle tenant starts fresh.
            st.finish.clear();
        }
    }

    /// Wake the head: room may have appeared before its timer (a refund).
    pub fn poke(&self) {
        if let Some(n) = self.lock().waiters.values().next() {
            n.notify_one();
        }
    }
}

/// A place held in a queue. Leaving is tied to this value: when the waiting call goes away
/// (its client disconnected and the handler's future was dropped), the seat is given up on
/// drop, so a vanished waiter can never sit at the head and stall everyone behind it.
pub struct Seat {
    queue: Arc<FairQueue>,
    place: Place,
    notify: Arc<Notify>,
    left: bool,
}

impl Seat {
    /// Join `queue` (see [`FairQueue::join`]).
    pub fn take(
        queue: &Arc<FairQueue>,
        tenant: &Arc<str>,
        priority: Priority,
        cost: u64,
        weight: u32,
        rejoin: Option<Place>,
    ) -> Seat {
        let (place, notify) = queue.join(tenant, priority, cost, weight, rejoin);
        Seat {
            queue: queue.clone(),
            place,
            notify,
            left: false,
        }
    }

    /// Whether this seat is at the head of its queue.
    pub fn is_head(&self) -> bool {
        self.queue.is_head(&self.place)
    }

    /// Resolves when this seat may have become the head, or room may have appeared.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Leave the queue (`served`: admitted, so virtual time advances). Returns the place, so
    /// a call that steps aside can come back to it.
    pub fn leave(mut self, served: bool) -> Place {
        self.left = true;
        self.queue.leave(&self.place, served);
        self.place
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.left {
            self.queue.leave(&self.place, false);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn higher_classes_go_first_and_a_backlog_does_not_starve_a_light_tenant() {
        let q = FairQueue::default();
        let greedy = t("greedy");
        let light = t("light");
        let crit = t("crit");
        let mut places = Vec::new();
        for _ in 0..10 {
            places.push((
                "greedy",
                q.join(&greedy, Priority::Standard, 1000, 1, None).0,
            ));
        }
        places.push(("light", q.join(&light, Priority::Standard, 1000, 1, None).0));
        places.push(("crit", q.join(&crit, Priority::Critical, 1000, 1, None).0));
        places.sort_by_key(|(_, p)| *p);
        let order: Vec<&str> = places.iter().map(|(n, _)| *n).collect();
        assert_eq!(order[0], "crit", "{order:?}");
        // Light's first call is tagged like greedy's first: it is served second among the
        // standard calls, not eleventh.
        let light_pos = order.iter().position(|n| *n == "light").unwrap();
        assert!(light_pos <= 2, "{order:?}");
    }

    #[test]
    fn weights_share_in_proportion() {
        let q = FairQueue::default();
        let a = t("a");
        let b = t("b");
        let mut places = Vec::new();
        for _ in 0..30 {
            places.push(('a', q.join(&a, Priority::Standard, 100, 2, None).0));
            places.push(('b', q.join(&b, Priority::Standard, 100, 1, None).0));
        }
        places.sort_by_key(|(_, p)| *p);
        let first30: String = places.iter().take(30).map(|(n, _)| *n).collect();
        let a_share = first30.chars().filter(|c| *c == 'a').count();
        assert!((19..=21).contains(&a_share), "{first30}");
    }

    #[test]
    fn leaving_wakes_the_next_head() {
        let q = FairQueue::default();
        let a = t("a");
        let (p1, n1) = q.join(&a, Priority::Standard, 1, 1, None);
        let (p2, _n2) = q.join(&a, Priority::Standard, 1, 1, None);
        assert!(q.is_head(&p1));
        drop(n1);
        q.leave(&p1, true);
        assert!(q.is_head(&p2));
        q.leave(&p2, true);
        assert!(q.is_empty());
    }

    #[test]
    fn a_dropped_seat_gives_up_its_place() {
        let q = Arc::new(FairQueue::default());
        let a = t("a");
        let first = Seat::take(&q, &a, Priority::Standard, 1, 1, None);
        let second = Seat::take(&q, &a, Priority::Standard, 1, 1, None);
        assert!(first.is_head() && !second.is_head());
        drop(first); // its caller went away
        assert!(second.is_head());
        let _ = second.leave(true);
        assert!(q.is_empty());
    }
}
