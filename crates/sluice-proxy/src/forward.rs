//! Forwarding a call along its route: the primary step (the requested model on the members that
//! serve it), then the model's fallback chain. [`Route`] is the progress through that route
//! (which step, which members of it were tried, how many attempts, the deadline, what a spent
//! step left behind); [`Call::forward`] drives it: pick a member, send, and let the route
//! classify the outcome as a [`Verdict`] (the reply ends the call, retry on this step, or hand
//! over to the next step).

use crate::api::{Call, SHOULD_RETRY, path_and_query};
use crate::error::GatewayError;
use crate::headers;
use crate::state::AppState;
use bytes::Bytes;
use http::HeaderValue;
use http::request::Parts;
use http_body_util::BodyExt;
use sluice_anthropic::MessageRequest;
use sluice_core::Provider;
use sluice_upstream::route::Steps;
use sluice_upstream::{
    Endpoint, InFlight, Outgoing, RetryPolicy, Step, Upstream, UpstreamBody, UpstreamError,
};
use std::time::{Duration, Instant};

type Reply = Result<http::Response<UpstreamBody>, UpstreamError>;

impl Call {
    /// Forward to the upstream with the client's headers (moved out of `parts` and filtered)
    /// and the original bytes, along the call's route: the primary step (the requested model
    /// on the members that serve it), then the model's fallback chain. Within a step, connect
    /// failures, first-byte timeouts and retryable statuses are retried under the upstream's
    /// retry policy; a step whose retries are spent (or whose members are all out) hands over
    /// to the next. Each attempt goes to a member of the step, by cache affinity when the body
    /// has a cacheable prefix, and reports its outcome to that member's health. Nothing has
    /// reached the client yet at any point here, so a retry or a fallback can never duplicate
    /// or splice a reply (a stream never changes provider after its first byte).
    ///
    /// `req` is the parsed Messages body (Messages and token counting), `None` for other
    /// endpoints, which go to Anthropic API members only and have no fallbacks.
    pub async fn forward(
        &mut self,
        s: &AppState,
        parts: &mut Parts,
        body: Bytes,
        endpoint: Endpoint,
        req: Option<&MessageRequest>,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
        // Decided before admission (`message_call`); other endpoints never get markers.
        let auto = self.prompt_cache.take();
        let mut h = std::mem::take(&mut parts.headers);
        headers::for_upstream(&mut h);
        let upstream = s.upstream();
        let pq = path_and_query(&parts.uri);
        let model = req.map_or("", |r| r.model.as_str());
        let stream = req.is_some_and(|r| r.stream);
        let affinity = match (req, &auto) {
            _ if !upstream.affinity() => None,
            // Keyed on the prefix the markers Sluice adds will cache.
            (Some(r), Some(a)) => {
                a.affinity_key(&body, r, self.cfg.caching.min_cacheable_tokens(model))
            }
            (Some(r), None) => sluice_anthropic::cache_affinity_key(&body, r),
            (None, _) => None,
        };
        let mut bodies = crate::prompt_cache::Bodies::new(body, req, auto);
        let mut route = Route::new(
            upstream,
            endpoint,
            upstream.steps(endpoint, model),
            affinity,
        );
        while let Some(step) = route.next_step() {
            while let Some(member) = route.pick() {
                let provider = upstream.provider(member);
                let model_id = upstream.model_id(member, step.model);
                // Only the Anthropic API reads the model from the body under the member's own
                // id; Bedrock and Vertex take the id from the URL.
                let names = if provider == Provider::Anthropic {
                    model_id
                } else {
                    step.model
                };
                let (member_body, cache_added) =
                    bodies.body_for(&self.cfg, provider, step.model, names)?;
                // The headers are needed again only if another attempt may follow.
                let hdrs = if route.no_attempt_can_follow() {
                    std::mem::take(&mut h)
                } else {
                    h.clone()
                };
                let load = upstream.in_flight(member);
                let out = Outgoing {
                    method: parts.method.clone(),
                    path_and_query: pq,
                    headers: hdrs,
                    body: member_body,
                    endpoint,
                    model_id,
                    stream,
                };
                let result = upstream.send_to(member, out).await;
                upstream.report(member, sluice_upstream::outcome_of(&result));
                match route.verdict(&result, &self.request_id) {
                    Verdict::Done { exhausted } => {
                        self.exhausted = exhausted;
                        self.rec.set_prompt_cache_added(cache_added);
                        return self.served(result, upstream, member, &step, route.attempts, load);
                    }
                    Verdict::Retry(wait) => route.back_off(result, load, wait).await,
                    Verdict::NextStep => {
                        route.keep_failed(result, load, cache_added).await;
                        break;
                    }
                }
            }
        }
        self.rec.set_retries(route.attempts.saturating_sub(1));
        let attempts = route.attempts;
        match route.finish() {
            Ok(f) => {
                self.exhausted = attempts > 1;
                self.rec.set_prompt_cache_added(f.prompt_cache_added);
                self.served(f.result, upstream, f.member, &f.step, attempts, f.load)
            }
            Err(retry_in) => Err(GatewayError::UpstreamUnavailable(retry_in)),
        }
    }

    /// The reply of the attempt that ends the call: record who served it, and say so.
    fn served(
        &mut self,
        result: Reply,
        upstream: &Upstream,
        member: usize,
        step: &Step<'_>,
        attempts: u32,
        load: InFlight,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
        self.rec.set_retries(attempts.saturating_sub(1));
        let name = upstream.member_name(member);
        let provider = upstream.provider(member);
        self.rec
            .set_served(name, provider, step.index, step.model, load);
        self.served = Some((provider, step.index));
        let mut resp = result?;
        self.mark_exhausted(&mut resp);
        if let Some(v) = served_by(name, provider, step) {
            resp.headers_mut().insert(SERVED_BY.clone(), v);
        }
        self.rec.mark_first_byte();
        if let Some(id) = resp
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            self.rec.set_request_id(id);
        }
        Ok(resp)
    }

    fn mark_exhausted(&self, resp: &mut http::Response<UpstreamBody>) {
        if self.exhausted {
            resp.headers_mut()
                .insert(SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        }
    }
}

/// What an attempt's outcome means for the call.
enum Verdict {
    /// The reply ends the call: it is not worth retrying, or the final step's retries are spent.
    Done {
        /// Retries were made and the last attempt still failed.
        exhausted: bool,
    },
    /// Another attempt on this step, after the wait; it goes to a member not tried yet if one is
    /// ready, else to the same one once it is back.
    Retry(Duration),
    /// This step is spent (attempts, deadline, or no member back in time): keep the reply and
    /// go on to the next step.
    NextStep,
}

/// A call's progress along its route. Lives on the stack for one call; nothing here allocates
/// unless a step has more than four attempts.
struct Route<'u> {
    upstream: &'u Upstream,
    policy: &'u RetryPolicy,
    endpoint: Endpoint,
    affinity: Option<u64>,
    steps: Steps<'u>,
    /// The index of the last step with a member, the one whose failure is the call's.
    last_step: Option<usize>,
    /// The index in `steps` of the next step to look at.
    next: usize,
    /// When the first attempt started: the retry deadline counts from here.
    started: Instant,
    /// Attempts over every step.
    attempts: u32,
    /// The current step.
    step: Step<'u>,
    /// It is the last step with a member.
    final_step: bool,
    /// The attempt number on the current step, from 1.
    attempt: u32,
    /// The member of the current attempt.
    member: usize,
    /// The members tried on the current step. Inline: a call's attempts on a step are few
    /// (max_attempts).
    tried: smallvec::SmallVec<[usize; 4]>,
    /// The last failed reply, returned if no later step does better.
    failed: Option<Failed<'u>>,
    /// How soon a member of the last step whose members were all out may be back.
    unavailable: Option<Duration>,
}

impl<'u> Route<'u> {
    fn new(
        upstream: &'u Upstream,
        endpoint: Endpoint,
        steps: Steps<'u>,
        affinity: Option<u64>,
    ) -> Self {
        let last_step = steps.iter().rposition(|st| st.eligible != 0);
        Self {
            upstream,
            policy: upstream.retry_policy(),
            endpoint,
            affinity,
            steps,
            last_step,
            next: 0,
            started: Instant::now(),
            attempts: 0,
            // Set by `next_step` before any attempt.
            step: Step {
                index: 0,
                model: "",
                eligible: 0,
            },
            final_step: false,
            attempt: 1,
            member: 0,
            tried: smallvec::SmallVec::new(),
            failed: None,
            unavailable: None,
        }
    }

    /// Enter the next step that has members, or `None` when the route is over: no step left,
    /// or a failed reply is in hand and the deadline has passed.
    fn next_step(&mut self) -> Option<Step<'u>> {
        while let Some(&step) = self.steps.get(self.next) {
            let si = self.next;
            self.next += 1;
            if step.eligible == 0 {
                continue;
            }
            if si > 0 && self.failed.is_some() && self.started.elapsed() >= self.policy.deadline {
                self.next = self.steps.len();
                return None;
            }
            self.step = step;
            self.final_step = Some(si) == self.last_step;
            self.tried.clear();
            self.attempt = 1;
            return Some(step);
        }
        None
    }

    /// Pick the member of the next attempt on the current step, or `None` when every member of
    /// it is out (the step is over).
    fn pick(&mut self) -> Option<usize> {
        // A retry prefers a member not tried yet, so traffic leaves a 429ing key at once.
        match self
            .upstream
            .choose(self.step.eligible, &self.tried, jitter(), self.affinity)
        {
            Ok(m) => {
                self.tried.push(m);
                self.attempts += 1;
                self.member = m;
                Some(m)
            }
            Err(u) => {
                self.unavailable = Some(u.retry_in);
                None
            }
        }
    }

    /// This is the last attempt of the final step: whatever happens, none follows.
    fn no_attempt_can_follow(&self) -> bool {
        self.attempt >= self.policy.max_attempts && self.final_step
    }

    /// What the outcome of the current attempt means; a failure worth retrying is logged.
    fn verdict(&self, result: &Reply, request_id: &str) -> Verdict {
        let policy = self.policy;
        let retryable = match result {
            Ok(r) => policy.retryable(r.status()),
            Err(UpstreamError::Unreachable(_)) => true,
            // The upstream has the request and may still generate (and bill) it.
            Err(UpstreamError::Timeout(_)) => {
                self.endpoint != Endpoint::Messages || policy.retry_messages_on_first_byte_timeout
            }
            Err(UpstreamError::Config(_)) => false,
        };
        if !retryable {
            return Verdict::Done { exhausted: false };
        }
        let elapsed = self.started.elapsed();
        let wait = if self.attempt >= policy.max_attempts {
            None
        } else {
            let reply_headers = result.as_ref().ok().map(|r| r.headers());
            let wait = policy.wait_before(self.attempt + 1, reply_headers, elapsed, jitter());
            match self.upstream.ready(self.step.eligible, &self.tried) {
                // Another member is ready now: the failed one's retry-after (or
                // backoff) is its own business.
                (true, _) if elapsed < policy.deadline => Some(Duration::ZERO),
                // Else wait at least until some member is back (a 429 without a
                // retry-after cools its member down longer than the jittered
                // backoff). If none is back within the deadline (e.g. this failure
                // opened the last breaker), the step is over.
                (_, Some(back)) => wait
                    .map(|w| w.max(back))
                    .filter(|w| elapsed + *w <= policy.deadline),
                (_, None) => None,
            }
        };
        tracing::info!(
            target: "sluice::retry",
            request_id = %request_id,
            attempt = self.attempts,
            member = self.upstream.member_name(self.member),
            step = self.step.index,
            status = result.as_ref().ok().map(|r| r.status().as_u16()),
            error = result.as_ref().err().map(|e| e.to_string()),
            wait_ms = wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            "upstream attempt failed"
        );
        match wait {
            Some(wait) => Verdict::Retry(wait),
            // Retried and still failing: the client's SDK would only retry in vain.
            None if self.final_step => Verdict::Done {
                exhausted: self.attempts > 1,
            },
            None => Verdict::NextStep,
        }
    }

    /// Let go of a failed attempt and wait before the next one on this step.
    async fn back_off(&mut self, result: Reply, load: InFlight, wait: Duration) {
        if let Ok(r) = result {
            // Read the (small) error body so the connection can be reused; never
            // wait long.
            let _ = tokio::time::timeout(Duration::from_secs(1), r.into_body().collect()).await;
        }
        drop(load);
        tokio::time::sleep(wait).await;
        self.attempt += 1;
    }

    /// Keep the reply that ended a step (read whole: it is small, and its connection goes back
    /// to the pool) in case the next step fares no better.
    async fn keep_failed(&mut self, result: Reply, load: InFlight, prompt_cache_added: bool) {
        let result = match result {
            Ok(r) => Ok(read_whole(r).await),
            Err(e) => Err(e),
        };
        self.failed = Some(Failed {
            result,
            member: self.member,
            step: self.step,
            load,
            prompt_cache_added,
        });
    }

    /// The route is over without a reply that ends the call: the last failed reply, or, if no
    /// step got as far as an attempt that failed, how soon a member may be back.
    fn finish(self) -> Result<Failed<'u>, Duration> {
        self.failed
            .ok_or(self.unavailable.unwrap_or(Duration::from_secs(1)))
    }
}

/// A step's failed reply, kept while later steps are tried.
struct Failed<'a> {
    result: Reply,
    member: usize,
    step: Step<'a>,
    load: InFlight,
    /// Its body carried markers Sluice added.
    prompt_cache_added: bool,
}

/// A (small, error) reply read whole, so it can be kept and its connection reused; a body
/// that does not arrive within a second is cut short.
async fn read_whole(r: http::Response<UpstreamBody>) -> http::Response<UpstreamBody> {
    let (parts, body) = r.into_parts();
    let bytes = match tokio::time::timeout(Duration::from_secs(1), body.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    };
    let mut parts = parts;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Response::from_parts(parts, UpstreamBody::Full(http_body_util::Full::new(bytes)))
}

/// Says which provider, member, model and fallback step served a call.
static SERVED_BY: http::HeaderName = http::HeaderName::from_static("x-sluice-served-by");
static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("request-id");

/// The `x-sluice-served-by` value. Every reply carries one and nearly all of a thread's replies
/// carry the same few, so the last one is kept per thread (a hit clones a shared buffer instead
/// of formatting and allocating).
fn served_by(name: &str, provider: Provider, step: &Step<'_>) -> Option<HeaderValue> {
    use std::cell::RefCell;
    type Last = Option<(String, Provider, u8, String, HeaderValue)>;
    thread_local! {
        static LAST: RefCell<Last> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((n, p, i, model, v)) = last.as_ref()
            && n == name
            && *p == provider
            && *i == step.index
            && model == step.model
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(&format!(
            "provider={}; member={name}; model={}; fallback={}",
            provider.as_str(),
            step.model,
            step.index
        ))
        .ok()?;
        *last = Some((
            name.to_owned(),
            provider,
            step.index,
            step.model.to_owned(),
            v.clone(),
        ));
        Some(v)
    })
}

/// A random number for member selection and backoff jitter. Called on every attempt, so not a
/// syscall: a per-thread xorshift64* seeded once from the OS (the quality only has to spread
/// choices and retries apart).
fn jitter() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}
