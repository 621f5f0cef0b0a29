//! Alerts through the real gateway against the fake upstream, posted to a local webhook
//! receiver: a tenant passing 80% of its daily budget fires exactly once however many calls
//! follow; a webhook that fails its first POSTs still gets the alert (retried with backoff);
//! an upstream error-rate episode fires, then resolves once calls succeed again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::extract::State;
use axum::http::StatusCode;
use common::{Env, Opts, SMALL, env_with};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook receiver on a loopback port that answers 500 to its first `fail_first` POSTs.
struct Hook {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    posts: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct HookState {
    got: Arc<Mutex<Vec<Value>>>,
    posts: Arc<AtomicUsize>,
    fail_first: usize,
}

async fn receive(State(s): State<HookState>, body: axum::body::Bytes) -> StatusCode {
    let n = s.posts.fetch_add(1, Ordering::SeqCst);
    if n < s.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    s.got
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::NO_CONTENT
}

async fn hook(fail_first: usize) -> Hook {
    let got = Arc::new(Mutex::new(Vec::new()));
    let posts = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(HookState {
            got: got.clone(),
            posts: posts.clone(),
            fail_first,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hook {
        url: format!("http://{addr}/hook"),
        got,
        posts,
    }
}

impl Hook {
    fn alerts(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `n` notifications arrived (or fail after `secs`).
    async fn wait_for(&self, n: usize, secs: u64) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let a = self.alerts();
            if a.len() >= n || Instant::now() > until {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn alerts_section(hook: &Hook, rules: &str) -> String {
    format!(
        "[alerts]\nwebhook_url = \"{}\"\nevaluate_every_secs = 0.05\nwebhook_backoff_ms = 20\n{rules}\n",
        hook.url
    )
}

/// Spend the `web` tenant's small daily budget: calls until the limiter refuses one.
async fn spend_budget(env: &Env) {
    let mut refused = false;
    for _ in 0..60 {
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            429 => refused = true,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused, "the budget never ran out: make it smaller");
}

async fn budget_env(hook: &Hook) -> Env {
    env_with(Opts {
        sections: alerts_section(hook, ""),
        web_extra: "budget_daily_usd = 0.01".into(),
        ..Opts::default()
    })
    .await
}

fn assert_budget_firing(a: &Value) {
    assert_eq!(a["alert"], "budget_daily", "{a}");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["labels"]["tenant"], "web");
    assert_eq!(a["threshold"], 80.0);
    assert!(a["value"].as_f64().unwrap() >= 80.0, "{a}");
    let at = a["at"].as_str().unwrap();
    assert!(
        at.len() >= 20 && at.ends_with('Z') && at.contains('T'),
        "{at}"
    );
}

#[tokio::test]
async fn a_tenant_past_80_percent_of_its_daily_budget_fires_exactly_once() {
    let hook = hook(0).await;
    let env = budget_env(&hook).await;
    spend_budget(&env).await;
    let got = hook.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_budget_firing(&got[0]);
    // Many more calls and evaluations later: still one episode, one notification.
    spend_budget(&env).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.alerts().len(), 1, "{:?}", hook.alerts());
    assert_eq!(hook.posts.load(Ordering::SeqCst), 1);
    let s = sluice_telemetry::render(env.gw.as_ref().unwrap().state().unwrap());
    assert!(
        s.contains("sluice_alerts_firing{alert=\"budget_daily\"} 1"),
        "{s}"
    );
    assert!(
        s.contains(r#"sluice_alert_notifications_total{result="delivered",state="firing"} 1"#),
        "{s}"
    );
}

#[tokio::test]
async fn a_webhook_failing_its_first_two_posts_still_gets_the_alert() {
    let hook = hook(2).await;
    let env = budget_env(&hook).await;
    spend_budget(&env).await;
    let got = hook.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_budget_firing(&got[0]);
    assert_eq!(hook.posts.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.alerts().len(), 1);
}

#[tokio::test]
async fn an_upstream_error_episode_fires_then_resolves_when_calls_succeed() {
    let hook = hook(0).await;
    let env = env_with(Opts {
        sections: alerts_section(
            &hook,
            "budget_daily_pct = 0\nupstream_error_rate_max = 0.5\nupstream_error_window_secs = 1.0\nupstream_error_min_calls = 5",
        ),
        upstream_extra: "max_attempts = 1\nbreaker_failures = 1000".into(),
        ..Opts::default()
    })
    .await;
    for _ in 0..10 {
        let r = env
            .post_messages(&env.web_key, SMALL)
            .header("x-mock-status", "500")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    let got = hook.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["alert"], "upstream_error_rate");
    assert_eq!(got[0]["state"], "firing");
    assert_eq!(got[0]["threshold"], 0.5);
    assert!(got[0]["value"].as_f64().unwrap() > 0.5);
    // The upstream recovers: once the window holds only successes, the episode ends.
    let until = Instant::now() + Duration::from_secs(10);
    while hook.alerts().len() < 2 && Instant::now() < until {
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = hook.alerts();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["alert"], "upstream_error_rate");
    assert_eq!(got[1]["state"], "resolved");
    assert!(got[1]["value"].as_f64().unwrap() <= 0.5);
    // Calls keep succeeding: nothing more.
    for _ in 0..10 {
        env.post_messages(&env.web_key, SMALL).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.alerts().len(), 2);
}

#[test]
fn the_alerts_section_has_defaults_and_refuses_nonsense() {
    use sluice_config::Config;
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.alerts.evaluate_every_secs, 15.0);
    assert_eq!(c.alerts.budget_daily_pct, 80.0);
    assert_eq!(c.alerts.upstream_error_rate_max, Some(0.05));
    assert_eq!(c.alerts.cache_hit_rate_min, None);
    for bad in [
        "webhook_url = \"ftp://example.com\"",
        "evaluate_every_secs = 0.0",
        "cache_hit_rate_min = 1.5",
        "webhook_attempts = 0",
        "budget_daily_pct = -1.0",
        "no_such_key = 1",
    ] {
        assert!(
            Config::from_toml(&format!("[alerts]\n{bad}\n")).is_err(),
            "{bad} was accepted"
        );
    }
}

#[tokio::test]
async fn an_org_pool_that_stays_short_fires_once_with_its_class_and_dimension() {
    let hook = hook(0).await;
    let env = env_with(Opts {
        sections: format!(
            "{}[org.classes.sonnet-4]\nrequests_per_minute = 2\n",
            alerts_section(
                &hook,
                "org_headroom_min_pct = 60.0\norg_headroom_for_secs = 0.3\nupstream_error_rate_max = 1.0"
            )
        ),
        ..Opts::default()
    })
    .await;
    for _ in 0..2 {
        let r = env.post_messages(&env.web_key, SMALL).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let got = hook.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let a = &got[0];
    assert_eq!(a["alert"], "org_headroom", "{a}");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["labels"]["class"], "sonnet-4");
    assert_eq!(a["labels"]["dimension"], "requests");
    assert!(a["value"].as_f64().unwrap() < 60.0, "{a}");
    // It stays one episode while the pool stays short.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.alerts().len(), 1, "{:?}", hook.alerts());
}
