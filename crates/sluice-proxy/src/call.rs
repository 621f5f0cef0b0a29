//! One call's record. A [`CallRecorder`] is created once the caller is authenticated and is
//! finished exactly once: by the handler, by the streaming body when the stream ends, or by its
//! own `Drop` when the client went away first (outcome `client_closed`, with whatever usage was
//! seen) or the server dropped the call when the shutdown grace ran out (outcome `shutdown`,
//! status 503). Finishing queues the ledger row (never blocking) and writes the call's log line.

use crate::state::AppState;
use bytes::Bytes;
use sluice_core::Provider;
use sluice_core::Usage;
use sluice_limits::limiter::Permit;
use sluice_store::LedgerRow;
use sluice_upstream::InFlight;
use std::time::{Duration, Instant};

/// How a call ended, beyond its status.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// HTTP status sent to the client.
    pub status: u16,
    /// Ledger outcome (see [`LedgerRow::outcome`]).
    pub outcome: &'static str,
    /// `error.type`, if any.
    pub error_type: Option<String>,
    /// Token usage seen.
    pub usage: Usage,
    /// `usage.output_tokens` is estimated from the content seen (a stream that ended before
    /// its final usage).
    pub usage_estimated: bool,
    /// Stop reason.
    pub stop_reason: Option<String>,
    /// Model the upstream served.
    pub model_served: Option<String>,
}

/// Accumulates a call's record and emits it once.
pub struct CallRecorder {
    state: AppState,
    row: Option<LedgerRow>,
    start: Instant,
    ttfb: Option<Duration>,
    /// Set when the tenant asked for bodies to be logged.
    log_bodies: Option<BodyLog>,
    /// The limiter's permit, settled when the call finishes.
    permit: Option<Permit>,
    /// The serving member's load count, released when the call finishes.
    in_flight: Option<InFlight>,
    /// The client-facing model of the serving step when the member is not the Anthropic API
    /// (whose model ids are provider aliases: the ledger and prices use the client's name).
    served_as: Option<String>,
}

/// Bodies kept for the log line of a tenant with `log_bodies = true`.
#[derive(Default)]
struct BodyLog {
    request: Option<Bytes>,
    response: Option<Bytes>,
}

/// Bodies are logged up to this size; a log line must stay a log line.
const LOG_BODY_MAX: usize = 64 * 1024;

impl CallRecorder {
    /// Resolves when the shutdown grace runs out (a stream body ends itself then).
    pub(crate) fn grace_over(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.state.grace_over()
    }

    pub(crate) fn new(state: AppState, row: LedgerRow, start: Instant, log_bodies: bool) -> Self {
        Self {
            state,
            row: Some(row),
            start,
            ttfb: None,
            log_bodies: log_bodies.then(BodyLog::default),
            permit: None,
            in_flight: None,
            served_as: None,
        }
    }

    /// Hold the limiter's permit until the call ends.
    pub fn set_permit(&mut self, p: Permit) {
        self.permit = Some(p);
    }

    /// The limiter's permit, while the call holds one.
    pub fn permit(&self) -> Option<&Permit> {
        self.permit.as_ref()
    }

    /// The first byte of the upstream's response arrived now (first call wins).
    pub fn mark_first_byte(&mut self) {
        if self.ttfb.is_none() {
            self.ttfb = Some(self.start.elapsed());
        }
    }

    /// Set the request id (the upstream's, once known).
    pub fn set_request_id(&mut self, id: &str) {
        if let Some(r) = self.row.as_mut() {
            id.clone_into(&mut r.request_id);
        }
    }

    /// Record the upstream member (its name, never its key) the answering attempt went to.
    pub fn set_upstream(&mut self, name: &str) {
        if let Some(r) = self.row.as_mut() {
            r.upstream = Some(name.to_owned());
        }
    }

    /// Record who served the call: the member (its name, never its key), its provider, the
    /// step of the fallback chain and its model; hold the member's load count until the end.
    pub fn set_served(
        &mut self,
        member: &str,
        provider: Provider,
        step: u8,
        model: &str,
        load: InFlight,
    ) {
        if let Some(r) = self.row.as_mut() {
            r.upstream = Some(member.to_owned());
            r.provider = Some(provider.as_str());
            r.fallback = step;
        }
        self.served_as = (provider != Provider::Anthropic || step > 0).then(|| model.to_owned());
        self.in_flight = Some(load);
    }

    /// Record how many upstream attempts beyond the first were made.
    pub fn set_retries(&mut self, n: u32) {
        if let Some(r) = self.row.as_mut() {
            r.retries = n;
        }
    }

    /// Mark the call as streamed.
    pub fn set_streamed(&mut self) {
        if let Some(r) = self.row.as_mut() {
            r.streamed = true;
        }
    }

    /// Record whether Sluice added prompt-cache markers to the body the serving attempt sent
    /// (decided per routing step, so the last attempt's decision stands).
    pub fn set_prompt_cache_added(&mut self, added: bool) {
        if let Some(r) = self.row.as_mut() {
            r.prompt_cache_added = added;
        }
    }

    /// Record what a cache saved the call (micro-dollars). A call answered from the response
    /// cache sets the stored reply's cost here; otherwise [`Self::finish`] computes the prompt
    /// caching savings from the usage.
    pub fn set_saved_micros(&mut self, micros: i64) {
        if let Some(r) = self.row.as_mut() {
            r.saved_micros = micros;
        }
    }

    /// Record the feature label.
    pub fn set_feature(&mut self, feature: Option<String>) {
        if let Some(r) = self.row.as_mut() {
            r.feature = feature;
        }
    }

    /// Record the model requested.
    pub fn set_model(&mut self, model: &str) {
        if let Some(r) = self.row.as_mut() {
            r.model = Some(model.to_owned());
        }
    }

    /// Keep the request body for the log line (only if the tenant logs bodies).
    pub fn keep_request_body(&mut self, body: &Bytes) {
        if let Some(b) = self.log_bodies.as_mut() {
            b.request = Some(body.clone());
        }
    }

    /// Keep the reply body for the log line (only if the tenant logs bodies).
    pub fn keep_response_body(&mut self, body: &Bytes) {
        if let Some(b) = self.log_bodies.as_mut() {
            b.response = Some(body.clone());
        }
    }

    /// Record how the call ended, and return what it cost (micro-dollars, once priced).
    /// Later calls are ignored (and return `None`).
    pub fn finish(&mut self, end: Ending) -> Option<i64> {
        let mut row = self.row.take()?;
        row.latency_ms = duration_ms(self.start.elapsed());
        row.ttfb_ms = self.ttfb.map(duration_ms);
        row.status = end.status;
        row.outcome = end.outcome;
        row.error_type = end.error_type;
        row.usage = end.usage;
        row.usage_estimated = end.usage_estimated;
        row.stop_reason = end.stop_reason;
        row.model_served = match self.served_as.take() {
            // Another provider's ids are aliases of the client's model name.
            Some(m) if row.provider != Some("anthropic") => Some(m),
            Some(m) => end.model_served.or(Some(m)),
            None => end.model_served,
        };
        self.in_flight = None;
        if let Some(p) = self.permit.take() {
            row.waited_ms = duration_ms(p.waited());
            if matches!(end.outcome, "client_closed" | "shutdown") && end.usage == Usage::default()
            {
                // Nothing is known of what the upstream did: keep the whole reservation
                // (dropping the permit does) and charge nothing we cannot show.
                drop(p);
            } else {
                let served = row.model_served.as_deref().or(row.model.as_deref());
                if row.outcome != "cache_hit" {
                    row.saved_micros = p.prompt_cache_saved(&row.usage, served).unwrap_or(0);
                }
                row.cost_micros = p
                    .settle(&row.usage, served)
                    .and_then(|c| i64::try_from(c).ok());
            }
        }
        if row.outcome == "cache_hit" {
            // Answered by the gateway: nothing was billed (the saving is in saved_micros).
            row.cost_micros = Some(0);
        }
        let cost = row.cost_micros;
        self.state.metrics().record(&row);
        self.log(&row);
        if !self.state.ledger().record(row) {
            tracing::error!("ledger queue full or closed: a ledger row was dropped");
        }
        cost
    }

    fn log(&self, r: &LedgerRow) {
        let (req_body, resp_body) = match &self.log_bodies {
            Some(b) => (clip(b.request.as_ref()), clip(b.response.as_ref())),
            None => (None, None),
        };
        tracing::info!(
            target: "sluice::call",
            request_id = %r.request_id,
            tenant = %r.tenant,
            key_id = %r.key_id,
            feature = r.feature.as_deref(),
            endpoint = r.endpoint,
            model = r.model.as_deref(),
            model_served = r.model_served.as_deref(),
            streamed = r.streamed,
            status = r.status,
            outcome = r.outcome,
            error_type = r.error_type.as_deref(),
            latency_ms = r.latency_ms,
            ttfb_ms = r.ttfb_ms,
            input_tokens = r.usage.input_tokens,
            output_tokens = r.usage.output_tokens,
            usage_estimated = r.usage_estimated,
            cache_creation_input_tokens = r.usage.cache_creation_input_tokens,
            cache_read_input_tokens = r.usage.cache_read_input_tokens,
            stop_reason = r.stop_reason.as_deref(),
            upstream = r.upstream.as_deref(),
            provider = r.provider,
            fallback = r.fallback,
            cost_micros = r.cost_micros,
            saved_micros = r.saved_micros,
            prompt_cache_added = r.prompt_cache_added,
            waited_ms = r.waited_ms,
            retries = r.retries,
            request_body = req_body.as_deref(),
            response_body = resp_body.as_deref(),
            "call"
        );
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        // Reached only when nobody finished the call: the client went away while we waited for
        // the upstream (dropping the handler's future cancels the upstream request too), or
        // the server dropped the call because the shutdown grace ran out.
        if self.row.is_some() {
            let end = if self.state.grace_is_over() {
                Ending {
                    status: 503,
                    outcome: "shutdown",
                    error_type: Some("api_error".into()),
                    ..Ending::default()
                }
            } else {
                Ending {
                    status: 499,
                    outcome: "client_closed",
                    ..Ending::default()
                }
            };
            self.finish(end);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clip(b: Option<&Bytes>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(&b[..b.len().min(LOG_BODY_MAX)]).into_owned())
}
