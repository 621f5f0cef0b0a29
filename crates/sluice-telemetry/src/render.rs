//! `GET /metrics`: the registry's families and the numbers read at scrape (module `gauges`),
//! in the Prometheus text format (0.0.4). The admin listener serves it; the state it reads
//! comes through [`Sources`].

use crate::Sources;
use crate::gauges::{
    scrape_budgets, scrape_ledger, scrape_limiter, scrape_response_cache, scrape_upstream,
};
use prometheus::TextEncoder;
use std::fmt::Write as _;
use std::sync::PoisonError;

/// The metrics in the Prometheus text format (0.0.4).
pub fn render(state: &dyn Sources) -> String {
    let Some(m) = &state.metrics().0 else {
        return String::new();
    };
    let _one = m.scrape.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::with_capacity(64 * 1024);
    if let Err(e) = TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    let mut t = Text(out);
    scrape_upstream(&mut t, state);
    scrape_ledger(&mut t, state);
    scrape_limiter(&mut t, state);
    scrape_budgets(&mut t, state);
    scrape_response_cache(&mut t, state);
    t.0
}

/// Text exposition of the numbers read at scrape.
pub(crate) struct Text(pub(crate) String);

impl Text {
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for ch in v.chars() {
                    match ch {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// One family with a sample per item.
    pub(crate) fn each<I, F, V>(&mut self, name: &str, kind: &str, help: &str, items: I, f: F)
    where
        I: IntoIterator,
        F: Fn(&I::Item) -> (Vec<(&'static str, String)>, V),
        V: std::fmt::Display,
    {
        self.family(name, kind, help);
        for item in items {
            let (labels, v) = f(&item);
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &l, v);
        }
    }
}
