//! The members of an upstream (e.g. several API keys of one organisation) and their health: a
//! member that answers 429 cools down for its `retry-after`; a member with consecutive failures
//! opens its circuit breaker, and once the open time has passed exactly one probe request may
//! go to it (half-open). Selection is weighted random among the members available now.
//!
//! A call whose body has a cacheable prefix carries an affinity key: members are ranked for it
//! by weighted rendezvous hashing (so a prefix keeps to one member, and adding or losing a
//! member moves only the prefixes that were on it), and the first member whose calls in flight
//! are under its bounded share takes it (consistent hashing with bounded loads: a hot prefix
//! spills over instead of piling onto one key).
//!
//! All state sits behind one short std mutex, taken for a few hundred nanoseconds per pick or
//! report and never across an `.await`. Functions take `now` so the state machine is tested
//! without sleeping.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Breaker knobs of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long an open breaker stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// What an attempt on a member came to, for its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that says the member works (2xx, and 4xx other than 429: the request's fault).
    Success,
    /// 429: the member's key is rate limited; it cools down this long.
    RateLimited(Duration),
    /// Connect failure, timeout, 5xx or 529: counts towards opening the breaker.
    Failure,
    /// Nothing was learned (e.g. the request could not even be built); frees a probe slot.
    Neutral,
}

impl Outcome {
    /// The outcome of an upstream reply's status and headers.
    pub fn of_status(status: http::StatusCode, headers: &http::HeaderMap) -> Self {
        match status.as_u16() {
            // Without a hint the upstream's own rate limiter usually frees up within a second.
            429 => Self::RateLimited(crate::retry_after(headers).unwrap_or(Duration::from_secs(1))),
            500..=599 => Self::Failure,
            _ => Self::Success,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Health {
    breaker: Breaker,
    cooldown_until: Option<Instant>,
    consecutive_failures: u32,
    requests: u64,
    failures: u64,
}

impl Health {
    /// Move an open breaker whose time is up to half-open.
    fn advance(&mut self, now: Instant) {
        if let Breaker::Open { until } = self.breaker
            && now >= until
        {
            self.breaker = Breaker::HalfOpen { probing: false };
        }
    }

    /// When this member can take a request: `None` when it can now, else the soonest instant
    /// it is expected back (a busy probe has no known end: `None` too, filtered by the caller).
    fn back_at(&self, now: Instant) -> Result<(), Option<Instant>> {
        let cooling = self.cooldown_until.filter(|t| *t > now);
        match (self.breaker, cooling) {
            (Breaker::Open { until }, c) => Err(Some(c.map_or(until, |c| c.max(until)))),
            (Breaker::HalfOpen { probing: true }, _) => Err(None),
            (_, Some(c)) => Err(Some(c)),
            _ => Ok(()),
        }
    }
}

/// A member's health as shown on `/readyz` (and later the admin API). Never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// The member's name.
    pub name: String,
    /// Its selection weight.
    pub weight: u32,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Milliseconds of 429 cooldown left (0: none).
    pub cooling_down_ms: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Attempts sent to it since start.
    pub requests: u64,
    /// Attempts that failed (connect error, timeout, 5xx) since start.
    pub failures: u64,
    /// Calls on it now (from the pick to the end of the reply's body).
    pub in_flight: u32,
}

/// Every member, as an eligibility mask.
pub const ALL: u64 = u64::MAX;

/// What a pick may choose from, and how.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// Bit `i` set: member `i` may serve the call (its model, its fallback step).
    pub eligible: u64,
    /// Members already tried by this call; avoided while others are available.
    pub tried: &'a [usize],
    /// A random number, for the weighted choice.
    pub random: u64,
    /// The call's cache-affinity key, if its body has a cacheable prefix.
    pub affinity: Option<u64>,
    /// Bounded load factor of affinity picks (≥ 1).
    pub load_factor: f64,
}

/// Every member is cooling down, open, or busy with its one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// How long until the soonest member is expected back.
    pub retry_in: Duration,
}

/// The members' health and weights.
#[derive(Debug)]
pub struct Pool {
    names: Vec<String>,
    weights: Vec<u32>,
    /// Per-member salts of the rendezvous hash, from the names: a member's ranking for a
    /// prefix does not depend on its position in the config.
    salts: Vec<u64>,
    policy: BreakerPolicy,
    health: Mutex<Vec<Health>>,
    in_flight: Box<[AtomicU32]>,
}

/// A call on a member: counted in its load until dropped (at the end of the reply's body).
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    member: usize,
}

impl InFlight {
    /// Count a call on `member` of `pool`.
    pub fn new(pool: Arc<Pool>, member: usize) -> Self {
        if let Some(n) = pool.in_flight.get(member) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Self { pool, member }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.pool.in_flight.get(self.member) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// splitmix64's finaliser: a full-avalanche mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_salt(name: &str) -> u64 {
    // FNV-1a, then mixed: stable across processes and builds, so replicas agree.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// Weighted rendezvous score of `member` (salt, weight) for `key`: highest wins.
fn score(key: u64, salt: u64, weight: u32) -> f64 {
    // A uniform in (0, 1): 53 random bits, never 0.
    let u = ((mix(key ^ salt) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

impl Pool {
    /// A pool of `(name, weight)` members, all healthy. A weight of 0 counts as 1.
    pub fn new(members: &[(String, u32)], policy: BreakerPolicy) -> Self {
        Self {
            names: members.iter().map(|(n, _)| n.clone()).collect(),
            weights: members.iter().map(|(_, w)| (*w).max(1)).collect(),
            salts: members.iter().map(|(n, _)| name_salt(n)).collect(),
            in_flight: members.iter().map(|_| AtomicU32::new(0)).collect(),
            policy: BreakerPolicy {
                failures: policy.failures.max(1),
                ..policy
            },
            health: Mutex::new(
                members
                    .iter()
                    .map(|_| Health {
                        breaker: Breaker::Closed,
                        cooldown_until: None,
                        consecutive_failures: 0,
                        requests: 0,
                        failures: 0,
                    })
                    .collect(),
            ),
        }
    }

    /// Member names, by index.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", String::as_str)
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the pool has no member.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        // A panic elsewhere cannot leave the counters inconsistent enough to matter.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pick a member for an attempt: weighted random (by `random`) among the members available
    /// at `now`, preferring ones not in `tried` when any is available. A half-open member's
    /// single probe slot is taken by the pick; the caller must [`Pool::report`] the outcome.
    pub fn pick(&self, now: Instant, tried: &[usize], random: u64) -> Result<usize, Unavailable> {
        self.choose(
            now,
            &Choice {
                eligible: ALL,
                tried,
                random,
                affinity: None,
                load_factor: 1.0,
            },
        )
    }

    /// [`Pool::pick`] among the members `c.eligible` allows, by affinity when `c.affinity` is
    /// set (see the module docs), else weighted random.
    pub fn choose(&self, now: Instant, c: &Choice<'_>) -> Result<usize, Unavailable> {
        let tried = c.tried;
        let mut h = self.lock();
        let mut soonest: Option<Instant> = None;
        let mut avail: Vec<usize> = Vec::with_capacity(h.len());
        for (i, m) in h.iter_mut().enumerate() {
            if i >= 64 || c.eligible & (1 << i) == 0 {
                continue;
            }
            m.advance(now);
            match m.back_at(now) {
                Ok(()) => avail.push(i),
                Err(Some(t)) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
                Err(None) => {}
            }
        }
        if avail.is_empty() {
            // Every member is cooling down or out. A 429 cooldown only steers traffic between
            // members: when the members whose breakers are closed are all merely cooling down,
            // the call still goes to the one back soonest, and the upstream (not the gateway)
            // decides. One 429 on one model must not turn a single-key gateway into a wall of
            // 503s for every model. A fast 503 is for members that are failing.
            if let Some((i, _)) = h
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && c.eligible & (1 << i) != 0)
                .filter(|(_, m)| matches!(m.breaker, Breaker::Closed))
                .min_by_key(|(_, m)| m.cooldown_until)
            {
                h[i].requests += 1;
                return Ok(i);
            }
            // Only busy probes (or nothing): their answer is due within a request's time;
            // a second is a fair guess for a client's retry.
            let retry_in = soonest.map_or(Duration::from_secs(1), |t| t - now);
            return Err(Unavailable { retry_in });
        }
        if avail.iter().any(|i| !tried.contains(i)) {
            avail.retain(|i| !tried.contains(i));
        }
        let chosen = match c.affinity {
            Some(key) if avail.len() > 1 => self.by_affinity(key, &avail, c.load_factor),
            _ => None,
        }
        .unwrap_or_else(|| self.by_weight(&avail, c.random));
        let m = &mut h[chosen];
        if let Breaker::HalfOpen { .. } = m.breaker {
            m.breaker = Breaker::HalfOpen { probing: true };
        }
        m.requests += 1;
        Ok(chosen)
    }

    /// Weighted random among `avail` (not empty).
    fn by_weight(&self, avail: &[usize], random: u64) -> usize {
        let total: u64 = avail.iter().map(|&i| u64::from(self.weights[i])).sum();
        let mut r = random % total.max(1);
        let mut chosen = avail[avail.len() - 1];
        for &i in avail {
            let w = u64::from(self.weights[i]);
            if r < w {
                chosen = i;
                break;
            }
            r -= w;
        }
        chosen
    }

    /// The highest-ranked member for `key` whose load stays within `factor` times its
    /// weighted share of the calls in flight (this one included); `None` if none is (only
    /// possible through rounding), and the caller falls back to weight.
    fn by_affinity(&self, key: u64, avail: &[usize], factor: f64) -> Option<usize> {
        let load = |i: usize| {
            self.in_flight
                .get(i)
                .map_or(0, |n| n.load(Ordering::Relaxed))
        };
        let total_load: u32 = avail.iter().map(|&i| load(i)).sum();
        let total_weight: u32 = avail.iter().map(|&i| self.weights[i]).sum();
        let mut ranked: Vec<(f64, usize)> = avail
            .iter()
            .map(|&i| (score(key, self.salts[i], self.weights[i]), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.into_iter().map(|(_, i)| i).find(|&i| {
            let share = f64::from(self.weights[i]) / f64::from(total_weight.max(1));
            let bound = (factor * f64::from(total_load + 1) * share).ceil();
            f64::from(load(i) + 1) <= bound
        })
    }

    /// Whether an `eligible` member not in `tried` is available at `now`, and how long until
    /// any eligible member is (`None` when only busy probes remain). Takes no probe slot.
    pub fn ready(&self, now: Instant, eligible: u64, tried: &[usize]) -> (bool, Option<Duration>) {
        let mut h = self.lock();
        let mut untried = false;
        let mut soonest: Option<Duration> = None;
        for (i, m) in h.iter_mut().enumerate() {
            if i >= 64 || eligible & (1 << i) == 0 {
                continue;
            }
            m.advance(now);
            let d = match m.back_at(now) {
                Ok(()) => {
                    untried |= !tried.contains(&i);
                    Duration::ZERO
                }
                Err(Some(t)) => t - now,
                Err(None) => continue,
            };
            soonest = Some(soonest.map_or(d, |s| s.min(d)));
        }
        (untried, soonest)
    }

    /// Report the outcome of an attempt on member `i` picked by [`Pool::pick`].
    pub fn report(&self, i: usize, outcome: Outcome, now: Instant) {
        let policy = self.policy;
        let mut h = self.lock();
        let Some(m) = h.get_mut(i) else { return };
        match outcome {
            Outcome::Success => {
                m.consecutive_failures = 0;
                m.breaker = Breaker::Closed;
            }
            Outcome::RateLimited(d) => {
                // The key answered: it is alive, only out of quota. No breaker step.
                m.cooldown_until = Some(now + d);
                if let Breaker::HalfOpen { .. } = m.breaker {
                    m.breaker = Breaker::Closed;
                    m.consecutive_failures = 0;
                }
            }
            Outcome::Failure => {
                m.failures += 1;
                m.consecutive_failures = m.consecutive_failures.saturating_add(1);
                match m.breaker {
                    Breaker::HalfOpen { .. } => {
                        m.breaker = Breaker::Open {
                            until: now + policy.open_for,
                        };
                    }
                    Breaker::Closed if m.consecutive_failures >= policy.failures => {
                        m.breaker = Breaker::Open {
                            until: now + policy.open_for,
                        };
                    }
                    // Late failures of attempts sent before it opened do not extend it.
                    _ => {}
                }
            }
            Outcome::Neutral => {
                if let Breaker::HalfOpen { probing: true } = m.breaker {
                    m.breaker = Breaker::HalfOpen { probing: false };
                }
            }
        }
    }

    /// Every member's health at `now`.
    pub fn health(&self, now: Instant) -> Vec<MemberHealth> {
        let mut h = self.lock();
        h.iter_mut()
            .enumerate()
            .map(|(i, m)| {
                m.advance(now);
                MemberHealth {
                    name: self.names[i].clone(),
                    weight: self.weights[i],
                    state: match m.breaker {
                        Breaker::Closed => "closed",
                        Breaker::Open { .. } => "open",
                        Breaker::HalfOpen { .. } => "half_open",
                    },
                    cooling_down_ms: m.cooldown_until.filter(|t| *t > now).map_or(0, |t| {
                        u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX)
                    }),
                    consecutive_failures: m.consecutive_failures,
                    requests: m.requests,
                    failures: m.failures,
                    in_flight: self.in_flight[i].load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn pool(weights: &[u32], failures: u32) -> Pool {
        let members: Vec<(String, u32)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("m{i}"), *w))
            .collect();
        Pool::new(
            &members,
            BreakerPolicy {
                failures,
                open_for: Duration::from_secs(10),
            },
        )
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_then_lets_exactly_one_probe_through() {
        let p = pool(&[1], 2);
        let t0 = Instant::now();
        assert_eq!(p.pick(t0, &[], 0), Ok(0));
        p.report(0, Outcome::Failure, t0);
        // A success in between resets the count.
        p.report(0, Outcome::Success, t0);
        p.report(0, Outcome::Failure, t0);
        assert_eq!(p.health(t0)[0].state, "closed");
        p.report(0, Outcome::Failure, t0);
        assert_eq!(p.health(t0)[0].state, "open");
        assert_eq!(
            p.pick(t0 + Duration::from_secs(4), &[], 0),
            Err(Unavailable {
                retry_in: Duration::from_secs(6)
            })
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(p.health(t1)[0].state, "half_open");
        assert_eq!(p.pick(t1, &[], 0), Ok(0), "the probe");
        assert!(p.pick(t1, &[], 0).is_err(), "only one probe at a time");
        // A failed probe re-opens it for the whole open time.
        p.report(0, Outcome::Failure, t1);
        assert_eq!(p.health(t1)[0].state, "open");
        assert!(p.pick(t1 + Duration::from_secs(9), &[], 0).is_err());
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(p.pick(t2, &[], 0), Ok(0));
        p.report(0, Outcome::Success, t2);
        let h = &p.health(t2)[0];
        assert_eq!((h.state, h.consecutive_failures), ("closed", 0));
        assert_eq!(p.pick(t2, &[], 0), Ok(0));
        assert_eq!(p.pick(t2, &[], 0), Ok(0), "closed: no probe limit");
    }

    #[test]
    fn a_429_cools_down_without_opening_the_breaker() {
        let p = pool(&[1, 1], 1);
        let t0 = Instant::now();
        p.report(0, Outcome::RateLimited(Duration::from_secs(2)), t0);
        let h = &p.health(t0)[0];
        assert_eq!((h.state, h.cooling_down_ms), ("closed", 2000));
        for r in 0..20 {
            assert_eq!(p.pick(t0, &[], r), Ok(1), "traffic moves to the other");
        }
        p.report(1, Outcome::RateLimited(Duration::from_secs(5)), t0);
        // Both merely cooling down: the call still goes out, to the one back soonest (only
        // failing members make the pool refuse).
        assert_eq!(p.pick(t0, &[], 0), Ok(0), "the soonest one back");
        assert_eq!(p.ready(t0, ALL, &[]), (false, Some(Duration::from_secs(2))));
        assert_eq!(p.pick(t0 + Duration::from_secs(2), &[], 0), Ok(0));
        assert_eq!(
            p.ready(t0 + Duration::from_secs(2), ALL, &[0]),
            (false, Some(Duration::ZERO))
        );
    }

    #[test]
    fn selection_follows_weights_and_avoids_members_already_tried() {
        let p = pool(&[1, 3], 5);
        let t0 = Instant::now();
        let mut counts = [0u32; 2];
        for r in 0..400 {
            counts[p.pick(t0, &[], r).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300]);
        for r in 0..20 {
            assert_eq!(p.pick(t0, &[1], r), Ok(0));
        }
        // When every available member was tried, a tried one is still better than none.
        assert!(p.pick(t0, &[0, 1], 7).is_ok());
        p.report(0, Outcome::RateLimited(Duration::from_secs(1)), t0);
        assert_eq!(p.pick(t0, &[1], 3), Ok(1));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let mut h = http::HeaderMap::new();
        let s = |c: u16| http::StatusCode::from_u16(c).unwrap();
        assert_eq!(Outcome::of_status(s(200), &h), Outcome::Success);
        assert_eq!(Outcome::of_status(s(400), &h), Outcome::Success);
        assert_eq!(Outcome::of_status(s(529), &h), Outcome::Failure);
        assert_eq!(
            Outcome::of_status(s(429), &h),
            Outcome::RateLimited(Duration::from_secs(1))
        );
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(
            Outcome::of_status(s(429), &h),
            Outcome::RateLimited(Duration::from_secs(3))
        );
    }

    fn affine(p: &Pool, key: u64, tried: &[usize]) -> usize {
        p.choose(
            Instant::now(),
            &Choice {
                eligible: ALL,
                tried,
                random: key,
                affinity: Some(key),
                load_factor: 1.25,
            },
        )
        .unwrap()
    }

    #[test]
    fn affinity_keeps_a_prefix_on_one_member_and_spreads_prefixes_by_weight() {
        let p = Arc::new(pool(&[1, 1, 2], 5));
        let mut per_member = [0u32; 3];
        for key in 0..3000u64 {
            let k = mix(key);
            let first = affine(&p, k, &[]);
            // Idle pool: the same prefix always lands on the same member.
            assert_eq!(affine(&p, k, &[]), first);
            per_member[first] += 1;
        }
        // Prefixes spread by weight (1:1:2) within sampling noise.
        assert!((600..900).contains(&per_member[0]), "{per_member:?}");
        assert!((600..900).contains(&per_member[1]), "{per_member:?}");
        assert!((1300..1700).contains(&per_member[2]), "{per_member:?}");
        // A retry avoids the member tried, and the next-ranked one is stable too.
        let k = mix(7);
        let first = affine(&p, k, &[]);
        let second = affine(&p, k, &[first]);
        assert_ne!(first, second);
        assert_eq!(affine(&p, k, &[first]), second);
    }

    #[test]
    fn a_hot_prefix_spills_over_once_its_member_is_past_its_bounded_share() {
        let p = Arc::new(pool(&[1, 1, 1, 1], 5));
        let k = mix(42);
        let home = affine(&p, k, &[]);
        // Hold calls in flight for this one prefix: the first ones stay home, then the bound
        // (1.25 × the fair share of the calls in flight) sends the rest elsewhere.
        let mut held = Vec::new();
        let mut placed = [0u32; 4];
        for _ in 0..40 {
            let m = affine(&p, k, &[]);
            placed[m] += 1;
            held.push(InFlight::new(Arc::clone(&p), m));
        }
        assert!(placed[home] >= 10, "{placed:?}");
        assert!(placed[home] <= 13, "{placed:?}: the bound holds");
        assert!(
            placed.iter().all(|&n| n > 0),
            "{placed:?}: spilled to every member"
        );
        assert_eq!(p.health(Instant::now())[home].in_flight, placed[home]);
        drop(held);
        assert_eq!(p.health(Instant::now())[home].in_flight, 0);
        assert_eq!(affine(&p, k, &[]), home, "back home once the load is gone");
    }

    #[test]
    fn ineligible_members_are_never_picked() {
        let p = pool(&[1, 1, 1], 1);
        let t0 = Instant::now();
        for r in 0..50 {
            let c = Choice {
                eligible: 0b100,
                tried: &[],
                random: r,
                affinity: Some(r),
                load_factor: 1.25,
            };
            assert_eq!(p.choose(t0, &c), Ok(2));
        }
        // The only eligible member failing makes the choice unavailable, others or not.
        p.report(2, Outcome::Failure, t0);
        let c = Choice {
            eligible: 0b100,
            tried: &[],
            random: 0,
            affinity: None,
            load_factor: 1.0,
        };
        assert!(p.choose(t0, &c).is_err());
        assert!(p.pick(t0, &[], 0).is_ok());
    }
}
