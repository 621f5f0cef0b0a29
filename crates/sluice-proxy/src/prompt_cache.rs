//! Automatic prompt caching on the request path: whether a call gets `cache_control` markers
//! (decided once per call, before admission, for the class admission uses, so the limiter can
//! predict the cache reads the markers will earn) and the body each
//! routing step sends (edited per provider form, then given the step's model).
//!
//! The decision ([`decide`]) is the tenant's policy for the call's class
//! (`prompt_cache_for`), the client's per-call opt-out (`x-sluice-prompt-cache: off`), and one
//! [`layout`] scan of the body: a body with any marker of its own, or one the strict walker
//! does not read, is sent exactly as it came. With `off`, the default, nothing is scanned or
//! allocated: the header is looked at, the body is not.
//!
//! Per attempt ([`Bodies::body_for`]), the serving member's provider picks the form: the
//! Anthropic API and Vertex take automatic caching (a top-level `cache_control`) plus explicit
//! breakpoints closing `tools` and `system`; Bedrock refuses the top-level field, so it gets
//! explicit ones only, the last user turn standing in for the automatic one. Each explicit
//! breakpoint is placed only where the prefix it closes reaches the minimum cacheable length of
//! the step's model, since the upstream writes nothing shorter. The edit comes first (the
//! layout's offsets are the client body's) and a model swap follows on the edited bytes, its
//! offset carried over by [`inserted_before`].

use crate::error::GatewayError;
use bytes::Bytes;
use http::HeaderMap;
use sluice_anthropic::MessageRequest;
use sluice_anthropic::prompt_cache::{
    CacheLayout, Plan, Spot, Ttl, inserted_before, layout, layout_of_parsed,
};
use sluice_config::{Config, PromptCacheMode, PromptCacheTtl};
use sluice_core::Provider;
use sluice_upstream::Endpoint;

/// The client's per-call opt-out. It is an `x-sluice-*` header, so
/// [`headers::for_upstream`](crate::headers::for_upstream) keeps it from the upstream.
pub(crate) static OPT_OUT: http::HeaderName =
    http::HeaderName::from_static("x-sluice-prompt-cache");

/// Bytes of raw JSON counted as one token when a prefix is compared to a model's minimum.
///
/// The limiter's estimator reads the whole body, not a prefix ending at a given block, so a
/// fixed ratio is used instead, chosen to over-count: English prose runs about 4 bytes a token
/// and code or non-Latin text 2 to 3, and the JSON syntax and escapes counted here are tokens
/// of their own or none at all. Over-counting costs at most a breakpoint the upstream does
/// not write (free: Sluice adds at most 3 of the 4 allowed); under-counting would skip a
/// breakpoint that would have cached, and lose every later read of it.
const BYTES_PER_TOKEN: u64 = 3;

/// A call that gets markers if its prefixes are long enough: what [`decide`] found.
#[derive(Debug)]
pub(crate) struct Auto {
    layout: CacheLayout,
    ttl: Ttl,
    /// Estimated tokens of the prefix closed at each spot, indexed like [`Spot::ALL`]
    /// (`None`: the body has no such spot).
    tokens: [Option<u64>; 4],
}

/// The two shapes of marker the providers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Automatic caching plus explicit `tools` / `system` breakpoints (Anthropic API, Vertex).
    Automatic,
    /// Explicit breakpoints only (Bedrock).
    Explicit,
}

impl Form {
    fn of(provider: Provider) -> Form {
        match provider {
            Provider::Bedrock => Form::Explicit,
            Provider::Anthropic | Provider::Vertex => Form::Automatic,
        }
    }
}

/// Refuse an `x-sluice-prompt-cache` other than `off` (see [`decide`] for why). Checked when
/// the call starts, before admission or a response-cache lookup.
pub(crate) fn check_header(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.get(&OPT_OUT) {
        Some(v) if !v.as_bytes().eq_ignore_ascii_case(b"off") => {
            Err(GatewayError::BadPromptCacheHeader)
        }
        _ => Ok(()),
    }
}

/// Decide, once per call, whether this call's body may get prompt-cache markers. `class` is the
/// admitted model class (`None` when the call holds no permit: it then takes the tenant's own
/// setting). An `x-sluice-prompt-cache` value other than `off` is refused whatever the tenant's
/// setting: a misspelt opt-out silently ignored would cache what the client asked not to, and
/// refusing it also on an `off` tenant finds the typo before the tenant is turned to `auto`.
pub(crate) fn decide(
    cfg: &Config,
    tenant: &str,
    class: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    req: Option<&MessageRequest>,
    endpoint: Endpoint,
) -> Result<Option<Auto>, GatewayError> {
    check_header(headers)?;
    let opted_out = headers.contains_key(&OPT_OUT);
    // Token counting takes markers but caches nothing; only Messages calls are worth editing.
    if opted_out || endpoint != Endpoint::Messages {
        return Ok(None);
    }
    let Some(t) = cfg.tenant(tenant) else {
        return Ok(None);
    };
    // The default stops here: no class lookup, no scan.
    if t.prompt_cache == PromptCacheMode::Off && t.class_prompt_cache.is_empty() {
        return Ok(None);
    }
    let policy = match class {
        Some(c) => t.prompt_cache_for(c),
        None => sluice_config::PromptCachePolicy {
            mode: t.prompt_cache,
            ttl: t.prompt_cache_ttl,
        },
    };
    if policy.mode == PromptCacheMode::Off {
        return Ok(None);
    }
    // A body the walker does not read goes as it came; the upstream judges it.
    let walked = match req {
        // The request parser checked the body is UTF-8; the walk need not again.
        Some(r) => layout_of_parsed(body, r),
        None => layout(body),
    };
    let Ok(layout) = walked else {
        return Ok(None);
    };
    if layout.has_marker() {
        return Ok(None);
    }
    let tokens = Spot::ALL.map(|s| {
        layout
            .prefix_bytes(s)
            .map(|b| (b as u64).div_ceil(BYTES_PER_TOKEN))
    });
    let ttl = match policy.ttl {
        PromptCacheTtl::FiveMinutes => Ttl::FiveMinutes,
        PromptCacheTtl::OneHour => Ttl::OneHour,
    };
    Ok(Some(Auto {
        layout,
        ttl,
        tokens,
    }))
}

impl Auto {
    /// The markers for `form` on a model whose minimum cacheable prefix is `min` tokens: each
    /// breakpoint where its prefix reaches the minimum. Empty when even the whole prompt is
    /// shorter, so such a body goes unedited (nothing of it could be cached).
    fn plan(&self, form: Form, min: u64) -> Plan {
        let reach = |s: Spot| {
            let i = match s {
                Spot::Tools => 0,
                Spot::System => 1,
                Spot::LastUser => 2,
                Spot::TopLevel => 3,
            };
            self.tokens[i].is_some_and(|t| t >= min)
        };
        if !reach(Spot::TopLevel) {
            return Plan::default();
        }
        let (tools, system) = (reach(Spot::Tools), reach(Spot::System));
        match form {
            Form::Automatic => Plan::anthropic(self.ttl, tools, system),
            Form::Explicit => Plan::bedrock(self.ttl, tools, system, reach(Spot::LastUser)),
        }
    }

    /// The member-affinity key of the call as it will be marked on `model` (with minimum
    /// `min`), or `None` when it gets no marker (nothing cached: spread by weight).
    pub(crate) fn affinity_key(&self, body: &[u8], req: &MessageRequest, min: u64) -> Option<u64> {
        let plan = self.plan(Form::Automatic, min);
        (!plan.is_empty()).then(|| {
            sluice_anthropic::planned_affinity_key(
                body,
                req,
                plan.marker(Spot::Tools).is_some(),
                plan.marker(Spot::System).is_some(),
            )
        })
    }
}

/// The bodies a call sends along its route: the client's bytes, edited per form where the call
/// gets markers, given each step's (or member's) model. A retry re-sends the last one, and an
/// edit is kept per form, so neither is made twice for the same plan.
pub(crate) struct Bodies<'a> {
    body: Bytes,
    req: Option<&'a MessageRequest>,
    auto: Option<Auto>,
    /// The edited body per form (indexed by `Form as usize`) and the plan it was made for.
    edited: [Option<(Plan, Bytes)>; 2],
    /// The last body handed out: its plan, form and model.
    last: Option<(Plan, Form, &'a str, Bytes)>,
}

impl<'a> Bodies<'a> {
    pub(crate) fn new(body: Bytes, req: Option<&'a MessageRequest>, auto: Option<Auto>) -> Self {
        Self {
            body,
            req,
            auto,
            edited: [None, None],
            last: None,
        }
    }

    /// The body for an attempt on a `provider` member of a step asking for `step_model`, which
    /// must name `model` (the step's model, or the member's own id for it), and whether it
    /// carries markers Sluice added.
    pub(crate) fn body_for(
        &mut self,
        cfg: &Config,
        provider: Provider,
        step_model: &str,
        model: &'a str,
    ) -> Result<(Bytes, bool), GatewayError> {
        let Some(req) = self.req else {
            return Ok((self.body.clone(), false));
        };
        let form = Form::of(provider);
        let plan = self.auto.as_ref().map_or(Plan::default(), |a| {
            a.plan(form, cfg.caching.min_cacheable_tokens(step_model))
        });
        let added = !plan.is_empty();
        if let Some((p, f, m, b)) = &self.last
            && *p == plan
            && *f == form
            && *m == model
        {
            return Ok((b.clone(), added));
        }
        let out = match (&self.auto, added) {
            (Some(auto), true) => {
                let slot = &mut self.edited[form as usize];
                let edited = match slot {
                    Some((p, b)) if *p == plan => b.clone(),
                    _ => {
                        let b = Bytes::from(sluice_anthropic::prompt_cache::apply(
                            &self.body,
                            &auto.layout,
                            &plan,
                        ));
                        *slot = Some((plan, b.clone()));
                        b
                    }
                };
                if model == req.model {
                    edited
                } else {
                    // The model's span moves by what the edit inserted before it.
                    let mut moved = req.clone();
                    moved.spans.model = req.spans.model.clone().map(|r| {
                        let by = inserted_before(&auto.layout, &plan, r.start);
                        r.start + by..r.end + by
                    });
                    swap_model(&edited, &moved, model)?
                }
            }
            _ if model == req.model => self.body.clone(),
            _ => swap_model(&self.body, req, model)?,
        };
        // Bedrock refuses a top-level `cache_control`: a client's own (automatic caching) is
        // moved onto the last user turn for it, its value and TTL kept, rather than sent to a
        // certain 400.
        let out = match form {
            Form::Explicit if !added => {
                sluice_anthropic::prompt_cache::top_level_to_explicit(&out).map_or(out, Bytes::from)
            }
            _ => out,
        };
        self.last = Some((plan, form, model, out.clone()));
        Ok((out, added))
    }
}

/// `body` naming another model (a fallback step's, or a member's own id for it).
fn swap_model(body: &[u8], req: &MessageRequest, model: &str) -> Result<Bytes, GatewayError> {
    sluice_anthropic::with_model(body, req, model)
        .map(Bytes::from)
        .ok_or_else(|| GatewayError::Internal("could not set the model of a fallback step".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn config(tenant_extra: &str) -> Config {
        Config::from_toml(&format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[[tenants]]\nname = \"t\"\n{tenant_extra}\n"
        ))
        .unwrap()
    }

    fn long_body() -> String {
        format!(
            r#"{{"messages":[{{"role":"user","content":"hi"}}],"max_tokens":5,"system":"{}","model":"claude-sonnet-4-5"}}"#,
            "x".repeat(4000)
        )
    }

    fn decided(cfg: &Config, class: Option<&str>, h: &HeaderMap, body: &str) -> Option<Auto> {
        decide(
            cfg,
            "t",
            class,
            h,
            body.as_bytes(),
            None,
            Endpoint::Messages,
        )
        .unwrap()
    }

    #[test]
    fn off_auto_class_override_and_opt_out() {
        let h = HeaderMap::new();
        let body = long_body();
        assert!(decided(&config(""), Some("sonnet"), &h, &body).is_none());
        let auto = config("prompt_cache = \"auto\"");
        assert!(decided(&auto, Some("sonnet"), &h, &body).is_some());
        // Token counting is never edited.
        let ct = decide(
            &auto,
            "t",
            None,
            &h,
            body.as_bytes(),
            None,
            Endpoint::CountTokens,
        );
        assert!(ct.unwrap().is_none());
        let mut off = HeaderMap::new();
        off.insert(&OPT_OUT, "OFF".parse().unwrap());
        assert!(decided(&auto, Some("sonnet"), &off, &body).is_none());
        let mut bad = HeaderMap::new();
        bad.insert(&OPT_OUT, "no".parse().unwrap());
        let e = decide(
            &config(""),
            "t",
            None,
            &bad,
            body.as_bytes(),
            None,
            Endpoint::Messages,
        );
        assert!(matches!(e, Err(GatewayError::BadPromptCacheHeader)));
        let per_class = config(
            "[tenants.class_prompt_cache.sonnet]\nprompt_cache = \"auto\"\nprompt_cache_ttl = \"1h\"",
        );
        let a = decided(&per_class, Some("sonnet"), &h, &body).unwrap();
        assert_eq!(a.ttl, Ttl::OneHour);
        assert!(decided(&per_class, Some("opus"), &h, &body).is_none());
        // A client's own marker, or a body the walker refuses, is left alone.
        let marked = body.replace(
            r#""max_tokens":5"#,
            r#""cache_control":{"type":"ephemeral"}"#,
        );
        assert!(decided(&auto, None, &h, &marked).is_none());
        assert!(decided(&auto, None, &h, &format!("{body} x")).is_none());
    }

    #[test]
    fn each_form_gets_its_breakpoints_and_a_swap_follows_the_edit() {
        let cfg = config("prompt_cache = \"auto\"");
        let body = long_body();
        let req = sluice_anthropic::parse_message_request(body.as_bytes()).unwrap();
        let auto = decided(&cfg, None, &HeaderMap::new(), &body);
        let mut b = Bodies::new(Bytes::from(body.clone()), Some(&req), auto);
        let (anth, added) = b
            .body_for(
                &cfg,
                Provider::Anthropic,
                "claude-sonnet-4-5",
                "claude-sonnet-4-5",
            )
            .unwrap();
        assert!(added);
        let v: serde_json::Value = serde_json::from_slice(&anth).unwrap();
        assert_eq!(v["cache_control"]["type"], "ephemeral");
        assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
        assert!(v["messages"][0]["content"].is_string());
        let (br, _) = b
            .body_for(
                &cfg,
                Provider::Bedrock,
                "claude-sonnet-4-5",
                "claude-sonnet-4-5",
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&br).unwrap();
        assert!(v.get("cache_control").is_none());
        assert_eq!(
            v["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        // A model swap on top of the edit names the new model and keeps the markers.
        let (swapped, _) = b
            .body_for(
                &cfg,
                Provider::Anthropic,
                "claude-sonnet-4-5",
                "claude-sonnet-4-5-20250929",
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&swapped).unwrap();
        assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            swapped.len(),
            anth.len() + "-20250929".len(),
            "only the model changed"
        );
        // Below a model's minimum (4096 for Haiku 4.5) nothing could be cached: sent as it came.
        let (haiku, added) = b
            .body_for(
                &cfg,
                Provider::Anthropic,
                "claude-haiku-4-5",
                "claude-haiku-4-5",
            )
            .unwrap();
        assert!(!added);
        assert_eq!(
            haiku,
            body.replace("claude-sonnet-4-5", "claude-haiku-4-5")
                .as_bytes()
        );
        let short = r#"{"model":"claude-sonnet-4-5","system":"s","messages":[{"role":"user","content":"hi"}]}"#;
        let req = sluice_anthropic::parse_message_request(short.as_bytes()).unwrap();
        let auto = decided(&cfg, None, &HeaderMap::new(), short);
        let mut b = Bodies::new(Bytes::from_static(short.as_bytes()), Some(&req), auto);
        let (same, added) = b
            .body_for(
                &cfg,
                Provider::Anthropic,
                "claude-sonnet-4-5",
                "claude-sonnet-4-5",
            )
            .unwrap();
        assert!(!added);
        assert_eq!(same, short.as_bytes());
    }
}
