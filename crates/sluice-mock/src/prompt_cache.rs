//! The prompt-cache model, shaped on what the upstream does, so that a gateway's caching
//! (explicit breakpoints, automatic caching) can be tested against honest numbers.
//!
//! - A request's cacheable blocks, in cache order: each `tools[i]`, each `system` block (a string
//!   system is one block), then each content block of each message (a string content is one
//!   block). A block costs a quarter of its canonical JSON bytes (the mock's tokenizer); the
//!   prefix ending with a block costs a quarter of the bytes of all blocks up to it.
//! - Breakpoints: every block carrying `cache_control`, plus the last block when the request has
//!   a top-level `cache_control` (automatic caching). More than 4 in all, or a `1h` one after a
//!   `5m` one, is the upstream's 400.
//! - Reads: at each breakpoint the prefix ending there and at up to 20 blocks before it is looked
//!   up; the longest live entry is read (and its TTL restarts, as a use refreshes it upstream).
//! - Writes: each breakpoint past that hit whose prefix reaches the model's minimum cacheable
//!   length is written with its TTL; the tokens between the hit and the last written breakpoint
//!   are the cache creation, each stretch billed at the TTL of the breakpoint that ends it.
//! - An entry is keyed by (scope, model, hash of the canonical prefix): key order, whitespace,
//!   `stream`, `max_tokens` and the `cache_control` markers themselves are not part of it, so a
//!   prefix written with its marker at block 5 is read by a request whose marker is at block 9.
//!   The scope is the organisation that owns the cache upstream (one key, one cloud account).
//! - The Anthropic API and Vertex take both forms; Bedrock refuses the top-level one with its
//!   `ValidationException` (in `bedrock.rs`), explicit markers work there as here.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::state::lock;

/// The most breakpoints a request may carry, the automatic one included.
const MAX_BREAKPOINTS: usize = 4;
/// How many blocks before a breakpoint the upstream still looks for an entry.
const LOOKBACK: usize = 20;
/// How many entries are kept before the map is cleared (a crude eviction).
const CAPACITY: usize = 100_000;
/// The minimum cacheable prefix of a model the table below does not name.
const DEFAULT_MIN_TOKENS: u64 = 1024;
/// The minimum cacheable prefix per model family, as the upstream documents them; an id matches
/// the longest family it contains, so Bedrock (`anthropic.…-v1:0`) and Vertex (`…@date`) ids
/// match too.
const MIN_TOKENS: &[(&str, u64)] = &[
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 1024),
    ("claude-sonnet-4-5", 1024),
    ("claude-opus-4-1", 1024),
    ("claude-opus-4", 1024),
    ("claude-sonnet-4", 1024),
    ("claude-3-7-sonnet", 1024),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
];

const MARKER: &[u8] = b"\"cache_control\"";

/// The minimum number of prefix tokens the upstream caches for `model`.
pub(crate) fn min_tokens(model: &str) -> u64 {
    MIN_TOKENS
        .iter()
        .filter(|(family, _)| model.contains(family))
        .max_by_key(|(family, _)| family.len())
        .map_or(DEFAULT_MIN_TOKENS, |(_, n)| *n)
}

/// A cache entry's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    FiveMinutes,
    OneHour,
}

impl Ttl {
    fn of(cache_control: &Value) -> Self {
        match cache_control.get("ttl").and_then(Value::as_str) {
            Some("1h") => Self::OneHour,
            _ => Self::FiveMinutes,
        }
    }

    fn duration(self) -> Duration {
        match self {
            Self::FiveMinutes => Duration::from_secs(5 * 60),
            Self::OneHour => Duration::from_secs(60 * 60),
        }
    }
}

/// One breakpoint: the index of its block, its TTL and where it sits (for error messages).
#[derive(Debug)]
struct Breakpoint {
    block: usize,
    ttl: Ttl,
    path: String,
}

/// What the cache model needs of a request: per block, the tokens and the hash of the prefix
/// ending with it, and the breakpoints in cache order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    prefix_tokens: Vec<u64>,
    prefix_hash: Vec<u64>,
    breakpoints: Vec<Breakpoint>,
}

/// Walks the cacheable blocks, hashing the prefix as it grows (one pass over the body).
#[derive(Default)]
struct Walker {
    plan: Plan,
    hasher: DefaultHasher,
    bytes: u64,
    buf: Vec<u8>,
}

impl Walker {
    /// Adds one block; `tag` places it (section, message and role), `path` names it.
    fn push(&mut self, tag: impl Hash, block: &Value, path: impl FnOnce() -> String) {
        self.buf.clear();
        canonical(block, &mut self.buf, true);
        tag.hash(&mut self.hasher);
        self.buf.as_slice().hash(&mut self.hasher);
        self.bytes += self.buf.len() as u64;
        self.plan.prefix_tokens.push(self.bytes / 4);
        self.plan.prefix_hash.push(self.hasher.clone().finish());
        if let Some(cc) = block.get("cache_control").filter(|c| !c.is_null()) {
            self.plan.breakpoints.push(Breakpoint {
                block: self.plan.prefix_hash.len() - 1,
                ttl: Ttl::of(cc),
                path: format!("{}.cache_control", path()),
            });
        }
    }

    /// A string where blocks are allowed stands for one text block, as upstream.
    fn push_content(&mut self, tag: impl Hash + Copy, content: &Value, path: &str) {
        match content {
            Value::String(text) => {
                let mut block = Map::new();
                block.insert("type".into(), "text".into());
                block.insert("text".into(), text.clone().into());
                self.push(tag, &Value::Object(block), || path.to_owned());
            }
            Value::Array(blocks) => {
                for (i, block) in blocks.iter().enumerate() {
                    self.push(tag, block, || format!("{path}.{i}"));
                }
            }
            _ => {}
        }
    }
}

/// The request's cache plan; `None` when it has no breakpoint (the common case, found without
/// parsing when the body never names `cache_control`). `Err` is the upstream's 400 message.
pub(crate) fn plan(body: &[u8]) -> Result<Option<Plan>, String> {
    if memchr::memmem::find(body, MARKER).is_none() {
        return Ok(None);
    }
    // The caller validated the body as JSON; a body that is not is simply not cached.
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let mut w = Walker::default();
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        for (i, tool) in tools.iter().enumerate() {
            w.push("tools", tool, || format!("tools.{i}"));
        }
    }
    if let Some(system) = v.get("system") {
        w.push_content("system", system, "system");
    }
    if let Some(messages) = v.get("messages").and_then(Value::as_array) {
        for (m, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            if let Some(content) = message.get("content") {
                w.push_content(
                    ("messages", m, role),
                    content,
                    &format!("messages.{m}.content"),
                );
            }
        }
    }
    let mut plan = w.plan;
    if let Some(cc) = v.get("cache_control").filter(|c| !c.is_null())
        && let Some(last) = plan.prefix_hash.len().checked_sub(1)
    {
        plan.breakpoints.push(Breakpoint {
            block: last,
            ttl: Ttl::of(cc),
            path: "cache_control".into(),
        });
    }
    if plan.breakpoints.is_empty() {
        return Ok(None);
    }
    if plan.breakpoints.len() > MAX_BREAKPOINTS {
        return Err(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
            plan.breakpoints.len()
        ));
    }
    let mut short_seen = false;
    for bp in &plan.breakpoints {
        match bp.ttl {
            Ttl::FiveMinutes => short_seen = true,
            Ttl::OneHour if short_seen => {
                return Err(format!(
                    "{}.ttl: a ttl='1h' cache_control block must not come after a ttl='5m' \
                     cache_control block. Note that blocks are processed in the following order: \
                     `tools`, `system`, `messages`.",
                    bp.path
                ));
            }
            Ttl::OneHour => {}
        }
    }
    Ok(Some(plan))
}

/// Writes `v` with object keys sorted and no whitespace, leaving out the block's own
/// `cache_control` (`top`): the canonical form a prefix is keyed and counted on.
fn canonical(v: &Value, out: &mut Vec<u8>, top: bool) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(k, _)| !(top && k.as_str() == "cache_control"))
                .collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string or a scalar to a Vec cannot fail.
                serde_json::to_writer(&mut *out, k).ok();
                out.push(b':');
                canonical(v, out, false);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out, false);
            }
            out.push(b']');
        }
        scalar => {
            serde_json::to_writer(&mut *out, scalar).ok();
        }
    }
}

/// The cache tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheUsage {
    pub(crate) read: u64,
    pub(crate) creation_5m: u64,
    pub(crate) creation_1h: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ttl: Ttl,
    expires: Instant,
}

/// The cache entries of every scope.
#[derive(Debug, Default)]
pub(crate) struct PromptCache {
    entries: Mutex<HashMap<u64, Entry>>,
}

fn entry_key(scope: &str, model: &str, prefix_hash: u64) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one((scope, model, prefix_hash))
}

impl PromptCache {
    /// Reads and writes the entries of `plan` at time `now`, with `min_tokens` the smallest
    /// prefix that is written.
    pub(crate) fn apply(
        &self,
        scope: &str,
        model: &str,
        plan: &Plan,
        min_tokens: u64,
        now: Instant,
    ) -> CacheUsage {
        let key = |block: usize| {
            plan.prefix_hash
                .get(block)
                .map(|h| entry_key(scope, model, *h))
        };
        let tokens = |block: usize| plan.prefix_tokens.get(block).copied().unwrap_or(0);
        let mut entries = lock(&self.entries);
        let mut hit: Option<(usize, u64)> = None;
        for bp in &plan.breakpoints {
            for block in (bp.block.saturating_sub(LOOKBACK)..=bp.block).rev() {
                if hit.is_some_and(|(h, _)| h >= block) {
                    break;
                }
                if let Some(k) = key(block)
                    && entries.get(&k).is_some_and(|e| e.expires > now)
                {
                    hit = Some((block, k));
                    break;
                }
            }
        }
        let mut usage = CacheUsage::default();
        if let Some((block, k)) = hit {
            usage.read = tokens(block);
            if let Some(e) = entries.get_mut(&k) {
                e.expires = now + e.ttl.duration();
            }
        }
        let mut written = usage.read;
        for bp in &plan.breakpoints {
            let prefix = tokens(bp.block);
            if hit.is_some_and(|(h, _)| bp.block <= h) || prefix < min_tokens {
                continue;
            }
            let Some(k) = key(bp.block) else { continue };
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(
                k,
                Entry {
                    ttl: bp.ttl,
                    expires: now + bp.ttl.duration(),
                },
            );
            let stretch = prefix.saturating_sub(written);
            match bp.ttl {
                Ttl::FiveMinutes => usage.creation_5m += stretch,
                Ttl::OneHour => usage.creation_1h += stretch,
            }
            written = written.max(prefix);
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::net::SocketAddr;

    use serde_json::json;

    use super::*;
    use crate::MockOptions;
    use crate::messages::{Usage, input_estimate, input_usage_at};
    use crate::state::State;

    const MODEL: &str = "claude-sonnet-4-5-20250929";

    fn state(opts: MockOptions) -> State {
        State::new(opts, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn usage(s: &State, scope: &str, body: &Value, now: Instant) -> Usage {
        input_usage_at(s, scope, body.to_string().as_bytes(), MODEL, now).unwrap()
    }

    /// Tokens of `blocks` as the mock counts them: a quarter of their canonical bytes.
    fn tokens(blocks: &[Value]) -> u64 {
        blocks
            .iter()
            .map(|b| {
                let mut out = Vec::new();
                canonical(b, &mut out, true);
                out.len() as u64
            })
            .sum::<u64>()
            / 4
    }

    fn text(s: &str) -> Value {
        json!({"type": "text", "text": s})
    }

    /// About 3,000 tokens.
    fn long_system() -> String {
        "You are a careful assistant; answer in full sentences. ".repeat(220)
    }

    fn assert_sums(u: &Usage, body: &Value) {
        let total = input_estimate(body.to_string().as_bytes());
        assert_eq!(
            u.input + u.cache_read + u.cache_creation_5m + u.cache_creation_1h,
            total
        );
    }

    #[test]
    fn minimums_follow_the_model_family() {
        assert_eq!(min_tokens("claude-sonnet-4-5-20250929"), 1024);
        assert_eq!(min_tokens("claude-opus-4-5-20251101"), 4096);
        assert_eq!(min_tokens("claude-opus-4-20250514"), 1024);
        assert_eq!(min_tokens("anthropic.claude-haiku-4-5-20251001-v1:0"), 4096);
        assert_eq!(min_tokens("claude-3-5-haiku@20241022"), 2048);
        assert_eq!(min_tokens("claude-3-haiku-20240307"), 2048);
        assert_eq!(min_tokens("something-else"), 1024);
    }

    #[test]
    fn a_growing_conversation_with_automatic_caching_reads_from_turn_two() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        let system = long_system();
        let mut blocks = vec![text(&system)];
        let mut messages: Vec<Value> = Vec::new();
        let mut previous_prefix = 0;
        for turn in 0..6 {
            let question = format!("Question number {turn}?");
            messages.push(json!({"role": "user", "content": question}));
            blocks.push(text(&question));
            let body = json!({
                "model": MODEL, "max_tokens": 100, "cache_control": {"type": "ephemeral"},
                "system": system, "messages": messages,
            });
            let u = usage(&s, "org", &body, now);
            let prefix = tokens(&blocks);
            assert!(prefix > 2900, "{prefix}");
            assert_sums(&u, &body);
            if turn == 0 {
                assert_eq!((u.cache_read, u.cache_creation_5m), (0, prefix));
            } else {
                // The previous turn's breakpoint is 2 blocks back: read, the rest written.
                assert_eq!(u.cache_read, previous_prefix, "turn {turn}");
                assert_eq!(u.cache_creation_5m, prefix - previous_prefix, "turn {turn}");
            }
            assert_eq!(u.cache_creation_1h, 0);
            previous_prefix = prefix;
            let answer = format!("Answer number {turn}.");
            messages.push(json!({"role": "assistant", "content": answer}));
            blocks.push(text(&answer));
        }
    }

    #[test]
    fn a_new_conversation_reads_the_system_prompt_another_one_wrote_at_its_breakpoint() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        let system = json!([{"type": "text", "text": long_system(),
                             "cache_control": {"type": "ephemeral"}}]);
        let system_tokens = tokens(&[text(&long_system())]);
        let first = json!({
            "model": MODEL, "max_tokens": 100, "cache_control": {"type": "ephemeral"},
            "system": system, "messages": [{"role": "user", "content": "First conversation."}],
        });
        let u = usage(&s, "org", &first, now);
        assert_eq!(u.cache_read, 0);
        assert!(u.cache_creation_5m > system_tokens);

        // Other parameters, another question, the system prompt's key order and spacing
        // changed: the prefix up to the system breakpoint is the same.
        let second = format!(
            r#"{{"stream": true, "messages": [{{"role": "user", "content": "A different one."}}],
               "system": [{{"cache_control": {{"type": "ephemeral"}}, "text": {}, "type": "text"}}],
               "max_tokens": 7, "model": "{MODEL}"}}"#,
            Value::from(long_system())
        );
        let u = input_usage_at(&s, "org", second.as_bytes(), MODEL, now).unwrap();
        assert_eq!(u.cache_read, system_tokens);
        assert_eq!(u.cache_creation_5m, 0);

        // Automatic caching alone wrote no entry at the end of the system prompt: a new
        // conversation relying on it alone misses.
        let s = state(MockOptions::default());
        let auto = |q: &str| {
            json!({
                "model": MODEL, "max_tokens": 100, "cache_control": {"type": "ephemeral"},
                "system": long_system(), "messages": [{"role": "user", "content": q}],
            })
        };
        usage(&s, "org", &auto("First conversation."), now);
        let u = usage(&s, "org", &auto("A different one."), now);
        assert_eq!(u.cache_read, 0);
        assert!(u.cache_creation_5m > system_tokens);
    }

    #[test]
    fn markers_are_not_part_of_the_prefix_and_scopes_and_models_do_not_share() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        let body = |marked: usize| {
            let content: Vec<Value> = (0..10)
                .map(|i| {
                    let mut b = text(&format!("Part {i}: {}", "lorem ipsum ".repeat(50)));
                    if i == marked {
                        b["cache_control"] = json!({"type": "ephemeral"});
                    }
                    b
                })
                .collect();
            json!({"model": MODEL, "max_tokens": 10, "system": long_system(),
                   "messages": [{"role": "user", "content": content}]})
        };
        let at5 = usage(&s, "org", &body(5), now);
        assert_eq!(at5.cache_read, 0);
        let at9 = usage(&s, "org", &body(9), now);
        assert_eq!(at9.cache_read, at5.cache_creation_5m);
        assert!(at9.cache_creation_5m > 0);
        assert_eq!(usage(&s, "other-org", &body(5), now).cache_read, 0);
        let b = body(5).to_string();
        let other_model = input_usage_at(&s, "org", b.as_bytes(), "claude-sonnet-4-6", now);
        assert_eq!(other_model.unwrap().cache_read, 0);
    }

    #[test]
    fn below_the_minimum_nothing_is_written() {
        let now = Instant::now();
        let body = json!({
            "model": MODEL, "max_tokens": 10,
            "system": [{"type": "text", "text": "Short instructions.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Hi"}],
        });
        let s = state(MockOptions::default());
        for _ in 0..2 {
            let u = usage(&s, "org", &body, now);
            assert_eq!(
                (u.cache_read, u.cache_creation_5m, u.cache_creation_1h),
                (0, 0, 0)
            );
            assert_eq!(u.input, input_estimate(body.to_string().as_bytes()));
        }
        // The option lowers the minimum for tests that want small prompts cached.
        let s = state(MockOptions {
            cache_min_tokens: Some(1),
            ..MockOptions::default()
        });
        let written = usage(&s, "org", &body, now).cache_creation_5m;
        assert_eq!(written, tokens(&[text("Short instructions.")]));
        assert_eq!(usage(&s, "org", &body, now).cache_read, written);
    }

    #[test]
    fn more_than_four_breakpoints_and_a_long_ttl_after_a_short_one_are_refused() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        let marked = |n: usize, ttls: &[Option<&str>]| {
            let content: Vec<Value> = (0..n)
                .map(|i| {
                    let mut cc = json!({"type": "ephemeral"});
                    if let Some(Some(ttl)) = ttls.get(i) {
                        cc["ttl"] = json!(ttl);
                    }
                    json!({"type": "text", "text": format!("part {i}"), "cache_control": cc})
                })
                .collect();
            json!({"model": MODEL, "max_tokens": 10,
                   "messages": [{"role": "user", "content": content}]})
        };
        let run = |b: &Value| input_usage_at(&s, "org", b.to_string().as_bytes(), MODEL, now);
        assert!(run(&marked(4, &[])).is_ok());
        assert_eq!(
            run(&marked(5, &[])).unwrap_err(),
            "A maximum of 4 blocks with cache_control may be provided. Found 5."
        );
        // The automatic breakpoint counts.
        let mut auto = marked(4, &[]);
        auto["cache_control"] = json!({"type": "ephemeral"});
        assert!(run(&auto).unwrap_err().ends_with("Found 5."));

        assert!(run(&marked(3, &[Some("1h"), Some("1h"), Some("5m")])).is_ok());
        let err = run(&marked(3, &[Some("1h"), None, Some("1h")])).unwrap_err();
        assert!(
            err.starts_with("messages.0.content.2.cache_control.ttl: a ttl='1h' cache_control block must not come after a ttl='5m'"),
            "{err}"
        );
        let mut auto = marked(1, &[None]);
        auto["cache_control"] = json!({"type": "ephemeral", "ttl": "1h"});
        assert!(run(&auto).unwrap_err().starts_with("cache_control.ttl: "));
    }

    #[test]
    fn the_lookback_reaches_twenty_blocks_back_and_no_further() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        // Block 0 is the system prompt; message blocks follow from block 1.
        let body = |marked_block: usize| {
            let content: Vec<Value> = (1..=30)
                .map(|i| {
                    let mut b = text(&format!("block {i}"));
                    if i == marked_block {
                        b["cache_control"] = json!({"type": "ephemeral"});
                    }
                    b
                })
                .collect();
            json!({"model": MODEL, "max_tokens": 10,
                   "system": [{"type": "text", "text": long_system(),
                               "cache_control": if marked_block == 0 { json!({"type": "ephemeral"}) } else { Value::Null }}],
                   "messages": [{"role": "user", "content": content}]})
        };
        let system_tokens = tokens(&[text(&long_system())]);
        for scope in ["a", "b"] {
            let u = usage(&s, scope, &body(0), now);
            assert_eq!(u.cache_creation_5m, system_tokens);
        }
        let u = usage(&s, "a", &body(20), now);
        assert_eq!(u.cache_read, system_tokens);
        assert!(u.cache_creation_5m > 0);
        let u = usage(&s, "b", &body(21), now);
        assert_eq!(u.cache_read, 0);
        assert!(u.cache_creation_5m > system_tokens);
    }

    #[test]
    fn entries_expire_by_their_ttl_and_a_read_refreshes_them() {
        let s = state(MockOptions::default());
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let body = |ttl: &str, q: &str| {
            json!({"model": MODEL, "max_tokens": 10,
                   "system": [{"type": "text", "text": long_system(),
                               "cache_control": {"type": "ephemeral", "ttl": ttl}}],
                   "messages": [{"role": "user", "content": q}]})
        };
        let short = body("5m", "q");
        let written = usage(&s, "org", &short, t0).cache_creation_5m;
        assert!(written > 0);
        assert_eq!(usage(&s, "org", &short, t0 + 4 * min).cache_read, written);
        // Refreshed at 4 minutes, so still there at 8.
        assert_eq!(usage(&s, "org", &short, t0 + 8 * min).cache_read, written);
        let late = usage(&s, "org", &short, t0 + 14 * min);
        assert_eq!((late.cache_read, late.cache_creation_5m), (0, written));

        let long = body("1h", "q");
        let s = state(MockOptions::default());
        let u = usage(&s, "org", &long, t0);
        assert_eq!((u.cache_creation_1h, u.cache_creation_5m), (written, 0));
        assert_eq!(usage(&s, "org", &long, t0 + 50 * min).cache_read, written);
        assert_eq!(usage(&s, "org", &long, t0 + 111 * min).cache_read, 0);
    }

    #[test]
    fn mixed_ttls_split_the_creation_at_the_breakpoints() {
        let s = state(MockOptions::default());
        let now = Instant::now();
        let tool = json!({"name": "lookup", "description": "Looks things up. ".repeat(400),
                          "input_schema": {"type": "object"},
                          "cache_control": {"type": "ephemeral", "ttl": "1h"}});
        let body = json!({"model": MODEL, "max_tokens": 10, "tools": [tool],
                          "system": [{"type": "text", "text": long_system(),
                                      "cache_control": {"type": "ephemeral"}}],
                          "messages": [{"role": "user", "content": "Hi"}]});
        let tool_tokens = tokens(std::slice::from_ref(&tool));
        let both = tokens(&[tool.clone(), text(&long_system())]);
        let u = usage(&s, "org", &body, now);
        assert_eq!(u.cache_creation_1h, tool_tokens);
        assert_eq!(u.cache_creation_5m, both - tool_tokens);
        assert_sums(&u, &body);
        let u = usage(&s, "org", &body, now);
        assert_eq!((u.cache_read, u.cache_creation_5m), (both, 0));
    }

    #[test]
    fn a_body_without_markers_is_not_parsed() {
        assert!(plan(b"not json, no marker").unwrap().is_none());
        assert!(
            plan(br#"{"messages":[{"role":"user","content":"cache_control"}]}"#)
                .unwrap()
                .is_none()
        );
    }
}
