//! The request walker: one pass over the raw JSON of a Messages body, borrowing every string
//! in place (a multi-megabyte base64 image is stepped over with `memchr`, hashed, and only its
//! header decoded), tallying the tokens of each part and the prefix boundaries prompt caching
//! works with.
//!
//! The walk over the request's sections is here; the JSON cursor it reads with is `cursor`,
//! the tokens of one content block are `block`, and the running prefix hashes and boundaries
//! of each section are `prefix`.

mod block;
mod cursor;
mod prefix;

use super::hash::{combine, hash_bytes};
use block::{Body, json_tokens, text_tokens};
use cursor::{Bad, Cur, R, Span, inner};
use memchr::memmem::Finder;
use prefix::{Mark, Section};
use std::sync::LazyLock;

// Framing the upstream adds around the content, in tokens. The upstream does not document
// these; the values are what the reference rendering of `tests/corpus/ground_truth.mjs`
// costs, and the per-model correction learns the real difference.
/// Per request: the prompt's opening and the final assistant turn marker.
const REQUEST_BASE: f64 = 4.0;
/// Per message: its role marker.
const MESSAGE: f64 = 4.0;
/// Per content block after the first of a message: the separator.
const BLOCK: f64 = 1.0;
/// Per tool definition.
const TOOL_DEF: f64 = 10.0;
/// Per `tool_use` block, beyond its name, id and input.
const TOOL_USE: f64 = 14.0;
/// Per `tool_result` block, beyond its id and content.
const TOOL_RESULT: f64 = 12.0;
/// Per `thinking` block, beyond its text.
const THINKING: f64 = 6.0;

/// The tool-use system prompt for `tool_choice` `auto` or `none` (Claude 4 models, documented).
const TOOLS_AUTO: f64 = 346.0;
/// The tool-use system prompt for `tool_choice` `any` or `tool` (Claude 4 models, documented).
const TOOLS_ANY: f64 = 313.0;
/// Documented extra input tokens of Anthropic-defined client tools, by type prefix.
const ANTHROPIC_TOOLS: [(&[u8], f64); 3] = [
    (b"bash_", 245.0),
    (b"text_editor_", 700.0),
    (b"computer_", 735.0),
];

/// Tokens per PDF page: the documented 1,500–3,000 text tokens per page, taken at its middle
/// (each page is also rendered as an image, of a size the upstream does not state).
const PDF_PAGE: f64 = 2250.0;
/// When the page count cannot be read cheaply: one page per this many bytes of PDF.
const PDF_BYTES_PER_PAGE: usize = 50_000;
/// A document the gateway cannot see (URL or Files API): assumed this many pages.
const UNSEEN_DOC_PAGES: f64 = 5.0;

/// Boundaries the upstream looks back over from a cache breakpoint ("about 20 blocks").
pub(crate) const LOOKBACK: usize = 20;
/// Most `cache_control` breakpoints a request may carry.
pub(crate) const BREAKPOINTS: usize = 4;

/// A request prefix that ends at a content block boundary: its stable hash (model included)
/// and its estimated tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Stable hash of the model and the prefix's content (tools, system, messages, in the
    /// upstream's order, `cache_control` markers left out).
    pub hash: u64,
    /// Estimated tokens of the prefix.
    pub tokens: u64,
}

/// What [`estimate_input`] finds in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEstimate {
    /// Every input token the model will see (uncached, cache writes and cache reads alike).
    pub total: u64,
    /// Tokens of the prefix up to and including the last block carrying `cache_control`
    /// (0 when none does).
    pub cached_prefix_tokens: u64,
    /// Hash of that prefix, when there is one.
    pub prefix_hash: Option<u64>,
    /// `false` when the body was not a JSON object and `total` is the bytes-based fallback.
    pub parsed: bool,
    breakpoints: [Prefix; BREAKPOINTS],
    n_breakpoints: usize,
    lookback: [Prefix; LOOKBACK],
    n_lookback: usize,
}

impl InputEstimate {
    fn fallback(len: usize) -> InputEstimate {
        InputEstimate {
            total: (len as u64).div_ceil(4).max(1),
            cached_prefix_tokens: 0,
            prefix_hash: None,
            parsed: false,
            breakpoints: [Prefix::default(); BREAKPOINTS],
            n_breakpoints: 0,
            lookback: [Prefix::default(); LOOKBACK],
            n_lookback: 0,
        }
    }

    /// Every prefix ending at a `cache_control` block, in prompt order (the last is
    /// [`InputEstimate::prefix_hash`]). These are what a successful call writes to the cache.
    pub fn breakpoints(&self) -> &[Prefix] {
        &self.breakpoints[..self.n_breakpoints]
    }

    /// The block boundaries just before the last breakpoint, nearest first: the upstream reads
    /// the longest of these it has cached (a conversation's previous turn usually), so a
    /// limiter that remembers [`InputEstimate::breakpoints`] can predict a cache read here even
    /// though the breakpoint itself moved.
    pub fn lookback(&self) -> &[Prefix] {
        &self.lookback[..self.n_lookback]
    }
}

/// Estimate the input tokens of a Messages (or `count_tokens`) request body: text by character
/// class, images by the upstream's size formula, PDFs by pages, tools with the tool-use system
/// prompt. Cheap (no upstream call, no copy of the body, no allocation) and total: a body that
/// is not a JSON object gets `bytes / 4`.
pub fn estimate_input(body: &[u8]) -> InputEstimate {
    // A block can only carry a breakpoint if the key is in the body (a key spelled with
    // escapes is not the key the upstream reads either).
    static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"cache_control"));
    walk(body, KEY.find(body).is_some(), false)
}

/// [`estimate_input`] for a body the gateway will give prompt-cache breakpoints itself
/// (automatic prompt caching) though it declares none: the breakpoints are where those will
/// be, the end of each part of the prompt (the last tool, the last `system` block, the last
/// message block), so admission can predict the cache reads they will earn like a client's.
pub fn estimate_input_auto(body: &[u8]) -> InputEstimate {
    walk(body, true, true)
}

/// [`estimate_input`], with prefix tracking chosen by the caller; `auto`: with no declared
/// breakpoint, each part's last block stands for one.
fn walk(body: &[u8], track: bool, auto: bool) -> InputEstimate {
    let mut w = Walk {
        b: body,
        track,
        auto,
        model: (0, 0),
        tool_choice: 0,
        tool_choice_any: false,
        thinking: 0,
        tools: Section::new(track),
        system: Section::new(track),
        messages: Section::new(track),
        n_tools: 0,
    };
    match w.top() {
        Ok(()) => w.finish(),
        Err(Bad) => InputEstimate::fallback(body.len()),
    }
}

struct Walk<'a> {
    b: &'a [u8],
    /// Prefixes are tracked (the body declares a cache breakpoint).
    track: bool,
    /// Breakpoints the gateway will add stand in when the body declares none.
    auto: bool,
    model: Span,
    tool_choice: u64,
    tool_choice_any: bool,
    thinking: u64,
    tools: Section,
    system: Section,
    messages: Section,
    n_tools: u64,
}

impl Walk<'_> {
    fn top(&mut self) -> R<()> {
        let b = self.b;
        let mut cur = Cur::at(b, (0, b.len()));
        cur.object(|c, key| {
            match key {
                // The three sections are read in place: no second pass over the body.
                b"tools" => self.tools_at(c),
                b"system" => self.system_at(c),
                b"messages" => self.messages_at(c),
                _ => {
                    let v = c.value(1)?;
                    match key {
                        b"model" => self.model = v,
                        b"tool_choice" => self.tool_choice_at(v)?,
                        b"thinking" => self.thinking = self.hash(2, &b[v.0..v.1]),
                        _ => {}
                    }
                    Ok(())
                }
            }
        })?;
        if cur.peek().is_some() {
            return Err(Bad);
        }
        Ok(())
    }

    fn tool_choice_at(&mut self, v: Span) -> R<()> {
        let b = self.b;
        self.tool_choice = self.hash(1, &b[v.0..v.1]);
        if b[v.0] == b'{' {
            let mut t = Cur::at(b, v);
            t.object(|c, k| {
                let tv = c.value(2)?;
                if k == b"type" {
                    self.tool_choice_any = matches!(inner(b, Some(tv)), Some(b"any" | b"tool"));
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// [`hash_bytes`] when prefixes are tracked (otherwise no hash is ever read).
    fn hash(&self, seed: u64, bytes: &[u8]) -> u64 {
        if self.track {
            hash_bytes(seed, bytes)
        } else {
            0
        }
    }

    fn high_res(&self) -> bool {
        let m = inner(self.b, Some(self.model)).unwrap_or_default();
        m.starts_with(b"claude-opus-4-7")
    }

    fn tools_at(&mut self, c: &mut Cur<'_>) -> R<()> {
        let (b, track) = (self.b, self.track);
        if c.peek() != Some(b'[') {
            return c.skip(1);
        }
        c.array(|c| {
            let (f, h) = Body::fields(c, track)?;
            let mut tok = TOOL_DEF;
            let ty = inner(b, f.ty);
            if let Some(ty) = ty.filter(|t| *t != b"custom") {
                tok += ANTHROPIC_TOOLS
                    .iter()
                    .find(|(p, _)| ty.starts_with(p))
                    .map_or(0.0, |(_, t)| *t);
            }
            for s in [f.name, f.description] {
                tok += inner(b, s).map_or(0.0, text_tokens);
            }
            if let Some((a, e)) = f.input_schema {
                tok += json_tokens(&b[a..e]);
            }
            self.n_tools += 1;
            self.tools.block_end(h, tok, 0.0, f.cache);
            Ok(())
        })
    }

    fn system_at(&mut self, c: &mut Cur<'_>) -> R<()> {
        let (b, track) = (self.b, self.track);
        match c.peek() {
            Some(b'"') => {
                let v = c.value(1)?;
                let tok = inner(b, Some(v)).map_or(0.0, text_tokens);
                let h = self.hash(3, &b[v.0..v.1]);
                self.system.block_end(h, tok, 0.0, false);
                Ok(())
            }
            Some(b'[') => {
                let mut first = true;
                let body = Body { b };
                c.array(|c| {
                    let (f, h) = Body::fields(c, track)?;
                    let mut cost = body.block_cost(&f, 1)?;
                    if !first {
                        cost.tok += BLOCK;
                    }
                    first = false;
                    self.system.block_end(h, cost.tok, cost.hi, f.cache);
                    Ok(())
                })
            }
            _ => c.skip(1),
        }
    }

    fn messages_at(&mut self, c: &mut Cur<'_>) -> R<()> {
        let b = self.b;
        if c.peek() != Some(b'[') {
            return c.skip(1);
        }
        c.array(|c| {
            let mut role: Option<u64> = None;
            let mut later = None;
            c.object(|c, k| match k {
                b"role" => {
                    let v = c.value(3)?;
                    role = Some(self.hash(4, inner(b, Some(v)).unwrap_or_default()));
                    Ok(())
                }
                b"content" => match role {
                    Some(r) => self.content_at(c, r),
                    None => {
                        // Content before role (rare): read it once the role is known.
                        later = Some(c.value(3)?);
                        Ok(())
                    }
                },
                _ => c.skip(3),
            })?;
            let role = role.unwrap_or_else(|| self.hash(4, b""));
            match later {
                Some(v) => self.content_at(&mut Cur::at(b, v), role),
                None => Ok(()),
            }
        })
    }

    /// A message's `content`, at the cursor.
    fn content_at(&mut self, c: &mut Cur<'_>, role: u64) -> R<()> {
        let (b, track) = (self.b, self.track);
        match c.peek() {
            Some(b'"') => {
                let v = c.value(3)?;
                let tok = MESSAGE + inner(b, Some(v)).map_or(0.0, text_tokens);
                let h = self.hash(role, &b[v.0..v.1]);
                self.messages.block_end(h, tok, 0.0, false);
            }
            Some(b'[') => {
                let mut first = true;
                let body = Body { b };
                c.array(|c| {
                    let (f, h) = Body::fields(c, track)?;
                    let mut cost = body.block_cost(&f, 4)?;
                    let h = if first {
                        cost.tok += MESSAGE;
                        if track { combine(&[role, h]) } else { 0 }
                    } else {
                        cost.tok += BLOCK;
                        h
                    };
                    first = false;
                    self.messages.block_end(h, cost.tok, cost.hi, f.cache);
                    Ok(())
                })?;
                if first {
                    self.messages.add(MESSAGE, 0.0);
                }
            }
            _ => {
                c.skip(3)?;
                self.messages.add(MESSAGE, 0.0);
            }
        }
        Ok(())
    }

    fn finish(self) -> InputEstimate {
        let hi_res = self.high_res();
        let overhead = REQUEST_BASE
            + match (self.n_tools, self.tool_choice_any) {
                (0, _) => 0.0,
                (_, false) => TOOLS_AUTO,
                (_, true) => TOOLS_ANY,
            };
        let tok = |m: &Mark| m.tok + if hi_res { m.hi } else { 0.0 };
        let mut offset = [overhead; 3];
        offset[1] = overhead + tok(&self.tools.cur);
        offset[2] = offset[1] + tok(&self.system.cur);

        let mut est = InputEstimate::fallback(0);
        est.parsed = true;
        est.total = round(offset[2] + tok(&self.messages.cur)).max(1);
        let (Some(t0), Some(t1), Some(t2)) = (
            self.tools.track.as_deref(),
            self.system.track.as_deref(),
            self.messages.track.as_deref(),
        ) else {
            return est; // no breakpoint declared: no prefixes
        };
        let secs = [t0, t1, t2];

        let model = hash_bytes(6, inner(self.b, Some(self.model)).unwrap_or_default());
        // Per section: the hash context and token offset its prefixes start from.
        let ctx = [
            combine(&[model, 0]),
            combine(&[model, 1, self.tools.cur.hash, self.tool_choice]),
            combine(&[
                model,
                2,
                self.tools.cur.hash,
                self.system.cur.hash,
                self.tool_choice,
                self.thinking,
            ]),
        ];
        let prefix = |s: usize, m: Mark| Prefix {
            hash: combine(&[ctx[s], m.hash]),
            tokens: round(offset[s] + tok(&m)),
        };

        let n_all: usize = secs.iter().map(|s| s.n_bps.min(BREAKPOINTS)).sum();
        if self.auto && n_all == 0 {
            // Each part's last block, where automatic prompt caching puts its breakpoints;
            // the boundaries before the last one are where a longer earlier turn was cached.
            for (s, sec) in secs.iter().enumerate() {
                if let Some(m) = sec.ring.newest_first().next() {
                    est.breakpoints[est.n_breakpoints] = prefix(s, m);
                    est.n_breakpoints += 1;
                }
            }
            if let Some(ls) = (0..3)
                .rev()
                .find(|&s| secs[s].ring.newest_first().next().is_some())
            {
                let last = est.breakpoints().last().copied();
                est.prefix_hash = last.map(|p| p.hash);
                est.cached_prefix_tokens = last.map_or(0, |p| p.tokens);
                let here = secs[ls].ring.newest_first().skip(1).map(|m| (ls, m));
                let earlier = (0..ls)
                    .rev()
                    .flat_map(|s| secs[s].ring.newest_first().map(move |m| (s, m)));
                for (s, m) in here.chain(earlier).take(LOOKBACK) {
                    est.lookback[est.n_lookback] = prefix(s, m);
                    est.n_lookback += 1;
                }
            }
            return est;
        }
        // The last breakpoints in prompt order.
        let all = (0..3).flat_map(|s| secs[s].breakpoints().map(move |m| (s, m)));
        for (s, m) in all.skip(n_all.saturating_sub(BREAKPOINTS)) {
            est.breakpoints[est.n_breakpoints] = prefix(s, m);
            est.n_breakpoints += 1;
        }
        if let Some(last) = est.breakpoints().last().copied() {
            est.prefix_hash = Some(last.hash);
            est.cached_prefix_tokens = last.tokens;
            // Boundaries before the last breakpoint, crossing into earlier sections.
            let Some(ls) = (0..3).rev().find(|&s| secs[s].n_bps > 0) else {
                return est;
            };
            let earlier = (0..ls)
                .rev()
                .flat_map(|s| secs[s].ring.newest_first().map(move |m| (s, m)));
            let here = secs[ls].ring_at_last_bp.newest_first().map(|m| (ls, m));
            for (s, m) in here.chain(earlier).take(LOOKBACK) {
                est.lookback[est.n_lookback] = prefix(s, m);
                est.n_lookback += 1;
            }
        }
        est
    }
}

fn round(t: f64) -> u64 {
    // Saturating: `as` maps NaN to 0 and clamps infinities, which is what an estimate wants.
    t.round() as u64
}

#[cfg(test)]
mod tests;
