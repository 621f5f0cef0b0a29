//! Alerts (issue #5): a background task evaluates the `[alerts]` rules every
//! `evaluate_every_secs` and reports each **episode** once: a `firing` notification when a
//! rule's condition starts to hold, a `resolved` one when it stops, never one per call. Each
//! notification is a `warn` log event (target `sluice::alert`) and, when `webhook_url` is set,
//! a JSON POST:
//!
//! ```json
//! {"alert": "budget_daily", "state": "firing", "labels": {"tenant": "web"},
//!  "value": 83.1, "threshold": 80.0, "at": "2026-11-21T10:00:00.000Z", "summary": "…"}
//! ```
//!
//! Rules:
//!
//! | rule | labels | fires when |
//! |---|---|---|
//! | `budget_daily` | `tenant` | the tenant's spend today ≥ `budget_daily_pct` % of `budget_daily_usd` |
//! | `cache_hit_rate` | `tenant` | cache reads / (input + cache writes + cache reads) over `cache_window_secs` < `cache_hit_rate_min` (with at least `cache_min_tokens` in the window) |
//! | `upstream_error_rate` | — | failed upstream calls / upstream calls over `upstream_error_window_secs` > `upstream_error_rate_max` (with at least `upstream_error_min_calls` in the window) |
//! | `org_headroom` | `class`, `dimension` | an org pool bucket has stayed under `org_headroom_min_pct` % of its limit for `org_headroom_for_secs` (in-process limiter) |
//!
//! A rule that cannot judge (too little traffic in its window, a spend the backend cannot read
//! synchronously) keeps its episode's state: quiet traffic neither starts nor ends an episode.
//! An episode whose rule or tenant disappears from the config is resolved.
//!
//! The evaluator reads only what the data plane already counts (the metrics registry and the
//! limiter's spend), so the request path does no work for alerts. Notifications go through a
//! bounded queue to one sender task, which retries a failed POST with exponential backoff up to
//! `webhook_attempts` times: a slow or failing webhook delays only later notifications, never
//! the evaluator or a call (a full queue drops the notification, counted and logged).

use crate::Sources;
use crate::gauges::spend_now;
use crate::metrics::TokenTotals;
use serde::Serialize;
use sluice_config::{AlertsConfig, Config};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webhook::{Delivery, deliver};

mod webhook;

/// The rule names (the `alert` field, the `alert` label of `sluice_alerts_firing`).
pub const RULES: &[&str] = &[BUDGET, CACHE, UPSTREAM, ORG];
const BUDGET: &str = "budget_daily";
const CACHE: &str = "cache_hit_rate";
const UPSTREAM: &str = "upstream_error_rate";
const ORG: &str = "org_headroom";

/// Notifications waiting for the sender; past this they are dropped.
const QUEUE: usize = 256;

/// One notification, as POSTed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// The rule.
    pub alert: &'static str,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// What the episode is about (`tenant`), empty for org-wide rules.
    pub labels: BTreeMap<String, String>,
    /// The measured value (percent of budget, hit rate, error rate).
    pub value: f64,
    /// The configured threshold it was compared with.
    pub threshold: f64,
    /// When it was decided (RFC 3339, UTC).
    pub at: String,
    /// One line for humans.
    pub summary: String,
}

/// The running alert tasks; dropping this stops them.
pub struct AlertTasks {
    evaluator: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl Drop for AlertTasks {
    fn drop(&mut self) {
        self.evaluator.abort();
        self.sender.abort();
    }
}

/// Start evaluating the `[alerts]` rules of `state`'s live config (a reload applies from the
/// next evaluation). Must be called within a Tokio runtime.
pub fn spawn<S: Sources + Clone + Send + Sync + 'static>(state: S) -> AlertTasks {
    let (tx, rx) = mpsc::channel::<Delivery>(QUEUE);
    let sender = tokio::spawn(deliver(rx, state.clone()));
    let evaluator = tokio::spawn(async move {
        let mut ev = Evaluator::new(state);
        loop {
            let every = ev.state.config().alerts.evaluate_every_secs.max(0.01);
            tokio::time::sleep(Duration::from_secs_f64(every)).await;
            let cfg = ev.state.config();
            let unix_ms = ev.state.clock().unix_ms();
            for n in ev.evaluate(&cfg, Instant::now(), unix_ms) {
                announce(&n);
                if cfg.alerts.webhook_url.is_some() {
                    let d = Delivery::new(n, &cfg.alerts);
                    let state = d.note.state;
                    if tx.try_send(d).is_err() {
                        tracing::error!(
                            target: "sluice::alert",
                            "alert webhook queue full: a notification was dropped"
                        );
                        ev.state.metrics().alert_notification(state, "dropped");
                    }
                }
            }
        }
    });
    AlertTasks { evaluator, sender }
}

fn announce(n: &Notification) {
    let labels = serde_json::to_string(&n.labels).unwrap_or_default();
    tracing::warn!(
        target: "sluice::alert",
        alert = n.alert,
        state = n.state,
        labels = %labels,
        value = n.value,
        threshold = n.threshold,
        "{}",
        n.summary
    );
}

/// What the counters said at one evaluation.
struct Sample {
    at: Instant,
    tokens: HashMap<String, TokenTotals>,
    upstream: (u64, u64),
}

/// One rule's judgement of one subject.
struct Verdict {
    rule: &'static str,
    labels: BTreeMap<String, String>,
    /// `None`: cannot tell (keep the episode's state).
    holds: Option<bool>,
    value: f64,
    threshold: f64,
    summary: String,
}

type Key = (&'static str, BTreeMap<String, String>);

/// The rules' state between evaluations.
struct Evaluator<S> {
    state: S,
    history: VecDeque<Sample>,
    /// Episodes firing now, with the last value seen.
    firing: HashMap<Key, (f64, f64)>,
    /// Since when each org pool bucket (class, dimension) has been under its threshold.
    org_low_since: HashMap<(Arc<str>, &'static str), Instant>,
}

impl<S: Sources> Evaluator<S> {
    fn new(state: S) -> Self {
        let mut e = Self {
            state,
            history: VecDeque::new(),
            firing: HashMap::new(),
            org_low_since: HashMap::new(),
        };
        let first = e.sample(Instant::now());
        e.history.push_back(first);
        e
    }

    fn sample(&self, at: Instant) -> Sample {
        let m = self.state.metrics();
        Sample {
            at,
            tokens: m.tokens_by_tenant(),
            upstream: m.upstream_totals(),
        }
    }

    /// The newest sample at least `window` old (else the oldest: the window so far).
    fn baseline(&self, now: Instant, window: Duration) -> Option<&Sample> {
        self.history
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= window)
            .or_else(|| self.history.front())
    }

    /// Judge every rule now and return the episodes that started or ended.
    fn evaluate(&mut self, cfg: &Arc<Config>, now: Instant, unix_ms: i64) -> Vec<Notification> {
        let a = &cfg.alerts;
        let current = self.sample(now);
        let mut verdicts = Vec::new();
        if a.enabled {
            self.budget(cfg, unix_ms, &mut verdicts);
            self.cache(cfg, &current, now, &mut verdicts);
            self.upstream(a, &current, now, &mut verdicts);
            self.org_headroom(cfg, now, &mut verdicts);
        }
        let max_window = Duration::from_secs_f64(
            a.cache_window_secs
                .max(a.upstream_error_window_secs)
                .max(0.01),
        );
        self.history.push_back(current);
        // Keep one sample at least the longest window old, and everything newer.
        while self.history.len() > 2
            && self
                .history
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= max_window)
        {
            self.history.pop_front();
        }

        let at = rfc3339(unix_ms);
        let mut out = Vec::new();
        let mut seen: Vec<Key> = Vec::new();
        for v in verdicts {
            let key = (v.rule, v.labels.clone());
            let was = self.firing.contains_key(&key);
            seen.push(key.clone());
            let start = v.holds == Some(true) && !was;
            let end = v.holds == Some(false) && was;
            if v.holds == Some(true) || (was && v.holds.is_none()) {
                self.firing.insert(key, (v.value, v.threshold));
            } else {
                self.firing.remove(&key);
            }
            if start || end {
                out.push(Notification {
                    alert: v.rule,
                    state: if start { "firing" } else { "resolved" },
                    labels: v.labels,
                    value: v.value,
                    threshold: v.threshold,
                    at: at.clone(),
                    summary: v.summary,
                });
            }
        }
        // Episodes no rule speaks about any more (rule off, tenant removed): over.
        let gone: Vec<Key> = self
            .firing
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((value, threshold)) = self.firing.remove(&key) {
                out.push(Notification {
                    alert: key.0,
                    state: "resolved",
                    summary: format!("{}: no longer evaluated", key.0),
                    labels: key.1,
                    value,
                    threshold,
                    at: at.clone(),
                });
            }
        }
        for rule in RULES {
            let n = self.firing.keys().filter(|k| k.0 == *rule).count();
            self.state.metrics().set_alerts_firing(rule, n);
        }
        out
    }

    fn budget(&self, cfg: &Config, unix_ms: i64, out: &mut Vec<Verdict>) {
        let pct = cfg.alerts.budget_daily_pct;
        if pct <= 0.0 {
            return;
        }
        for t in &cfg.tenants {
            let Some(budget) = t.budget_daily_usd.filter(|b| *b > 0.0) else {
                continue;
            };
            let spent = spend_now(self.state.limiter(), &t.name, unix_ms).map(|s| s.0);
            let used = spent.map_or(0.0, |s| s as f64 / 1e6 / budget * 100.0);
            out.push(Verdict {
                rule: BUDGET,
                labels: tenant(&t.name),
                holds: spent.map(|_| used >= pct),
                value: used,
                threshold: pct,
                summary: format!(
                    "tenant {} has spent {used:.1}% of its daily budget of ${budget} (alert at {pct}%)",
                    t.name
                ),
            });
        }
    }

    fn cache(&self, cfg: &Config, cur: &Sample, now: Instant, out: &mut Vec<Verdict>) {
        let a = &cfg.alerts;
        let Some(min) = a.cache_hit_rate_min else {
            return;
        };
        let window = Duration::from_secs_f64(a.cache_window_secs.max(0.01));
        let Some(base) = self.baseline(now, window) else {
            return;
        };
        for t in &cfg.tenants {
            let zero = TokenTotals::default();
            let c = cur.tokens.get(&t.name).unwrap_or(&zero);
            let b = base.tokens.get(&t.name).unwrap_or(&zero);
            let d = |i: usize| {
                c.get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(b.get(i).copied().unwrap_or(0))
            };
            // Kinds: input, output, cache_write, cache_read.
            let (input, write, read) = (d(0), d(2), d(3));
            let all = input + write + read;
            let rate = if all == 0 {
                0.0
            } else {
                read as f64 / all as f64
            };
            out.push(Verdict {
                rule: CACHE,
                labels: tenant(&t.name),
                holds: (all >= a.cache_min_tokens.max(1)).then_some(rate < min),
                value: rate,
                threshold: min,
                summary: format!(
                    "tenant {}: prompt-cache hit rate {:.1}% over the last {}s (alert below {:.1}%)",
                    t.name,
                    rate * 100.0,
                    a.cache_window_secs,
                    min * 100.0
                ),
            });
        }
    }

    fn upstream(&self, a: &AlertsConfig, cur: &Sample, now: Instant, out: &mut Vec<Verdict>) {
        let Some(max) = a.upstream_error_rate_max else {
            return;
        };
        let window = Duration::from_secs_f64(a.upstream_error_window_secs.max(0.01));
        let Some(base) = self.baseline(now, window) else {
            return;
        };
        let calls = cur.upstream.0.saturating_sub(base.upstream.0);
        let errors = cur.upstream.1.saturating_sub(base.upstream.1);
        let rate = if calls == 0 {
            0.0
        } else {
            errors as f64 / calls as f64
        };
        out.push(Verdict {
            rule: UPSTREAM,
            labels: BTreeMap::new(),
            holds: (calls >= a.upstream_error_min_calls.max(1)).then_some(rate > max),
            value: rate,
            threshold: max,
            summary: format!(
                "upstream error rate {:.1}% ({errors} of {calls} calls) over the last {}s (alert above {:.1}%)",
                rate * 100.0,
                a.upstream_error_window_secs,
                max * 100.0
            ),
        });
    }
}

impl<S: Sources> Evaluator<S> {
    /// Org pool headroom: a bucket under the threshold for the whole hold time fires (a burst
    /// that the pool absorbs in seconds is what it is for); one back above it resolves.
    fn org_headroom(&mut self, cfg: &Arc<Config>, now: Instant, out: &mut Vec<Verdict>) {
        let a = &cfg.alerts;
        let Some(min) = a.org_headroom_min_pct else {
            return;
        };
        let hold = Duration::from_secs_f64(a.org_headroom_for_secs.max(0.0));
        let mut seen = Vec::new();
        for h in self.state.limiter().headroom(cfg) {
            let (sluice_limits::backend::ScopeKind::Org, Some(class)) = (h.kind, &h.class) else {
                continue;
            };
            if h.limit == 0 {
                continue;
            }
            let dim = dimension_name(h.dimension);
            let pct = h.remaining as f64 / h.limit as f64 * 100.0;
            let key = (class.clone(), dim);
            seen.push(key.clone());
            let holds = if pct < min {
                let since = *self.org_low_since.entry(key).or_insert(now);
                now.saturating_duration_since(since) >= hold
            } else {
                self.org_low_since.remove(&key);
                false
            };
            out.push(Verdict {
                rule: ORG,
                labels: BTreeMap::from([
                    ("class".to_owned(), class.to_string()),
                    ("dimension".to_owned(), dim.to_owned()),
                ]),
                holds: Some(holds),
                value: pct,
                threshold: min,
                summary: format!(
                    "org pool {class}: {pct:.1}% of its {} left (alert under {min}% for {}s)",
                    h.dimension.describe(),
                    a.org_headroom_for_secs
                ),
            });
        }
        self.org_low_since.retain(|k, _| seen.contains(k));
    }
}

/// A dimension's label value.
pub(crate) fn dimension_name(d: sluice_limits::Dimension) -> &'static str {
    match d {
        sluice_limits::Dimension::Requests => "requests",
        sluice_limits::Dimension::InputTokens => "input_tokens",
        sluice_limits::Dimension::OutputTokens => "output_tokens",
    }
}

fn tenant(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("tenant".to_owned(), name.to_owned())])
}

fn rfc3339(unix_ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}
