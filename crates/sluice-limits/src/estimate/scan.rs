//! The request walker: one pass over the raw JSON of a Messages body, borrowing every string
//! in place (a multi-megabyte base64 image is stepped over with `memchr`, hashed, and only its
//! header decoded), tallying the tokens of each part and the prefix boundaries prompt caching
//! works with.

use super::hash::{combine, hash_bytes};
use super::media::{self, B64, ImageLimits};
use super::text::{Classifier, string_end_escaped};
use memchr::memmem::Finder;
use std::sync::LazyLock;

/// Deepest JSON nesting walked before the body is treated as malformed (bounds recursion).
const MAX_DEPTH: u32 = 128;

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
    walk(body, KEY.find(body).is_some())
}

/// [`estimate_input`], with prefix tracking chosen by the caller.
fn walk(body: &[u8], track: bool) -> InputEstimate {
    let mut w = Walk {
        b: body,
        track,
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

#[derive(Debug, Clone, Copy)]
struct Bad;
type R<T> = Result<T, Bad>;
/// A byte range of the body.
type Span = (usize, usize);

#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    hash: u64,
    tok: f64,
    /// Extra tokens if the model reads images at high resolution.
    hi: f64,
}

/// The last [`LOOKBACK`] boundaries of a section.
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    m: [Mark; LOOKBACK],
    n: usize,
}

impl Ring {
    fn push(&mut self, m: Mark) {
        self.m[self.n % LOOKBACK] = m;
        self.n += 1;
    }

    fn newest_first(&self) -> impl Iterator<Item = Mark> + '_ {
        (0..self.n.min(LOOKBACK)).map(|k| self.m[(self.n - 1 - k) % LOOKBACK])
    }
}

/// One of the three parts of the prompt, in the order the cache sees them: tools, system,
/// messages. The body may list them in any order, so each keeps its own running hash and the
/// prefix hashes are put together at the end.
///
/// The hashes and block boundaries serve prompt caching only, so they are kept only for a
/// body that declares a breakpoint (`track`); any other body is just counted, without hashing
/// its bytes or filling a kilobyte of boundaries per section.
#[derive(Debug, Default)]
struct Section {
    cur: Mark,
    track: Option<Box<Track>>,
}

/// A section's block boundaries and breakpoints (see [`Section`]).
#[derive(Debug, Default)]
struct Track {
    ring: Ring,
    bps: [Mark; BREAKPOINTS],
    n_bps: usize,
    ring_at_last_bp: Ring,
}

impl Section {
    fn new(track: bool) -> Section {
        Section {
            cur: Mark::default(),
            track: track.then(Box::default),
        }
    }

    fn add(&mut self, tok: f64, hi: f64) {
        self.cur.tok += tok;
        self.cur.hi += hi;
    }

    fn block_end(&mut self, block_hash: u64, tok: f64, hi: f64, cache: bool) {
        self.add(tok, hi);
        let Some(t) = self.track.as_deref_mut() else {
            return;
        };
        self.cur.hash = combine(&[self.cur.hash, block_hash]);
        if cache {
            t.ring_at_last_bp = t.ring;
            t.bps[t.n_bps % BREAKPOINTS] = self.cur;
            t.n_bps += 1;
        }
        t.ring.push(self.cur);
    }
}

impl Track {
    fn breakpoints(&self) -> impl Iterator<Item = Mark> + '_ {
        let n = self.n_bps.min(BREAKPOINTS);
        (0..n).map(move |k| self.bps[(self.n_bps - n + k) % BREAKPOINTS])
    }
}

/// Tokens of one block: the base estimate and the extra for high-resolution image models.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    tok: f64,
    hi: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.tok += o.tok;
        self.hi += o.hi;
    }
}

impl Cost {
    fn flat(tok: f64) -> Cost {
        Cost { tok, hi: 0.0 }
    }
}

/// Where the interesting fields of a content block are (keys arrive in any order).
#[derive(Debug, Default)]
struct Fields {
    ty: Option<Span>,
    text: Option<Span>,
    content: Option<Span>,
    input: Option<Span>,
    name: Option<Span>,
    id: Option<Span>,
    thinking: Option<Span>,
    data: Option<Span>,
    title: Option<Span>,
    context: Option<Span>,
    description: Option<Span>,
    input_schema: Option<Span>,
    /// The `source` object, read in place (its `data` may be megabytes of base64).
    source: Source,
    /// `source` when it is a string (a search result's).
    source_str: Option<Span>,
    cache: bool,
}

/// An image's or document's `source`.
#[derive(Debug, Default)]
struct Source {
    ty: Option<Span>,
    data: Option<Span>,
    /// `data` holds escapes (so it is not plain base64 to decode in place).
    data_escaped: bool,
    content: Option<Span>,
}

struct Walk<'a> {
    b: &'a [u8],
    /// Prefixes are tracked (the body declares a cache breakpoint).
    track: bool,
    model: Span,
    tool_choice: u64,
    tool_choice_any: bool,
    thinking: u64,
    tools: Section,
    system: Section,
    messages: Section,
    n_tools: u64,
}

// ---------------------------------------------------------------------------------------
// The JSON cursor.

#[derive(Debug, Clone, Copy)]
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
    /// Whether the last string read held an escape.
    escaped: bool,
}

impl<'a> Cur<'a> {
    fn at(b: &'a [u8], s: Span) -> Cur<'a> {
        Cur {
            b: &b[..s.1],
            i: s.0,
            escaped: false,
        }
    }

    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                return Some(c);
            }
        }
        None
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Bad)
        }
    }

    /// A string; returns the span of its inside.
    fn string(&mut self) -> R<Span> {
        self.expect(b'"')?;
        let s = self.i;
        let (e, escaped) = string_end_escaped(self.b, s);
        if e >= self.b.len() {
            return Err(Bad);
        }
        self.i = e + 1;
        self.escaped = escaped;
        Ok((s, e))
    }

    /// Any value; returns its span.
    fn value(&mut self, depth: u32) -> R<Span> {
        self.peek();
        let s = self.i;
        self.skip(depth)?;
        Ok((s, self.i))
    }

    fn skip(&mut self, depth: u32) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Bad);
        }
        match self.peek().ok_or(Bad)? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(|c, _| c.skip(depth + 1)),
            b'[' => self.array(|c| c.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let s = self.i;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    self.i += 1;
                }
                if self.i > s { Ok(()) } else { Err(Bad) }
            }
            _ => Err(Bad),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(Bad)
        }
    }

    /// An object: `f` is called with each key (raw inside of its string) and must consume the
    /// value.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let b = self.b;
        loop {
            let (ks, ke) = self.string()?;
            self.expect(b':')?;
            f(self, &b[ks..ke])?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Bad),
            }
        }
    }

    /// An array: `f` must consume each element.
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Bad),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The request.

/// The inside of `s` if it is a string value.
fn inner(b: &[u8], s: Option<Span>) -> Option<&[u8]> {
    let (a, e) = s?;
    (e >= a + 2 && b[a] == b'"').then(|| &b[a + 1..e - 1])
}

fn text_tokens(raw: &[u8]) -> f64 {
    let mut c = Classifier::default();
    c.json_str(raw);
    c.finish().tokens()
}

fn json_tokens(raw: &[u8]) -> f64 {
    let mut c = Classifier::default();
    c.json_value(raw);
    c.finish().tokens()
}

fn image_cost(std: f64, hi: f64) -> Cost {
    Cost {
        tok: std,
        hi: hi - std,
    }
}

/// The body, for the block-level readers (a copyable view, so closures that update a
/// [`Walk`]'s sections can read blocks at the same time).
#[derive(Debug, Clone, Copy)]
struct Body<'a> {
    b: &'a [u8],
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

        // The last breakpoints in prompt order.
        let all = (0..3).flat_map(|s| secs[s].breakpoints().map(move |m| (s, m)));
        let n_all: usize = secs.iter().map(|s| s.n_bps.min(BREAKPOINTS)).sum();
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

impl<'a> Body<'a> {
    fn s(&self, span: Option<Span>) -> Option<&'a [u8]> {
        inner(self.b, span)
    }

    /// Read a block object's fields; with `hash`, also its content hash (every key and value
    /// except `cache_control`, so moving a breakpoint does not change a prefix's hash).
    fn fields(c: &mut Cur<'_>, hash: bool) -> R<(Fields, u64)> {
        let b = c.b;
        let mut f = Fields::default();
        let mut h = 5u64;
        if c.peek() != Some(b'{') {
            let v = c.value(4)?;
            return Ok((f, if hash { hash_bytes(h, &b[v.0..v.1]) } else { 0 }));
        }
        c.object(|c, k| {
            let v = if k == b"source" && c.peek() == Some(b'{') {
                c.peek();
                let start = c.i;
                f.source = Self::source(c)?;
                (start, c.i)
            } else {
                c.value(5)?
            };
            let slot = match k {
                b"cache_control" => {
                    f.cache = b[v.0] == b'{';
                    return Ok(());
                }
                b"type" => Some(&mut f.ty),
                b"text" => Some(&mut f.text),
                b"source" => Some(&mut f.source_str),
                b"content" => Some(&mut f.content),
                b"input" => Some(&mut f.input),
                b"name" => Some(&mut f.name),
                b"id" | b"tool_use_id" => Some(&mut f.id),
                b"thinking" => Some(&mut f.thinking),
                b"data" => Some(&mut f.data),
                b"title" => Some(&mut f.title),
                b"context" => Some(&mut f.context),
                b"description" => Some(&mut f.description),
                b"input_schema" => Some(&mut f.input_schema),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(v);
            }
            if hash {
                h = hash_bytes(hash_bytes(h, k), &b[v.0..v.1]);
            }
            Ok(())
        })?;
        Ok((f, h))
    }

    /// A `source` object at the cursor.
    fn source(c: &mut Cur<'_>) -> R<Source> {
        let mut s = Source::default();
        c.object(|c, k| {
            let v = c.value(6)?;
            match k {
                b"type" => s.ty = Some(v),
                b"data" => {
                    s.data = Some(v);
                    s.data_escaped = c.escaped;
                }
                b"content" => s.content = Some(v),
                _ => {}
            }
            Ok(())
        })?;
        Ok(s)
    }

    /// Tokens of one content block.
    fn block_cost(&self, f: &Fields, depth: u32) -> R<Cost> {
        let b = self.b;
        let txt = |s: Option<Span>| inner(b, s).map_or(0.0, text_tokens);
        let ty = self.s(f.ty).unwrap_or_default();
        Ok(match ty {
            b"text" => Cost::flat(txt(f.text)),
            b"image" => self.image(&f.source),
            b"document" => {
                let mut c = self.document(&f.source, depth)?;
                c.tok += txt(f.title) + txt(f.context);
                c
            }
            b"tool_use" | b"server_tool_use" | b"mcp_tool_use" => {
                let input = f.input.map_or(0.0, |(a, e)| json_tokens(&b[a..e]));
                Cost::flat(TOOL_USE + txt(f.name) + txt(f.id) + input)
            }
            b"thinking" => Cost::flat(THINKING + txt(f.thinking)),
            b"redacted_thinking" => {
                Cost::flat(THINKING + self.s(f.data).map_or(0.0, |d| d.len() as f64 / 4.0))
            }
            _ if ty == b"tool_result" || ty.ends_with(b"_tool_result") => {
                let mut c = self.content(f.content, depth)?;
                c.tok += TOOL_RESULT + txt(f.id);
                c
            }
            b"search_result" => {
                let mut c = self.content(f.content, depth)?;
                c.tok += txt(f.title) + txt(f.source_str);
                c
            }
            _ => {
                // An unknown kind: count whatever text it holds, so nothing is free.
                let mut c = Cost::flat(txt(f.text));
                for s in [f.input, f.content].into_iter().flatten() {
                    c.tok += json_tokens(&b[s.0..s.1]);
                }
                c
            }
        })
    }

    /// A `content` value nested in a block: a string, or an array of blocks.
    fn content(&self, v: Option<Span>, depth: u32) -> R<Cost> {
        let b = self.b;
        let Some(v) = v else {
            return Ok(Cost::default());
        };
        let mut cost = Cost::default();
        match b[v.0] {
            b'"' => cost.tok = inner(b, Some(v)).map_or(0.0, text_tokens),
            b'[' if depth < 8 => {
                let mut cur = Cur::at(b, v);
                cur.array(|c| {
                    let (f, _) = Self::fields(c, false)?;
                    cost += self.block_cost(&f, depth + 1)?;
                    cost.tok += BLOCK;
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(cost)
    }

    fn image(&self, src: &Source) -> Cost {
        let dims = match self.s(src.ty) {
            Some(b"base64") if !src.data_escaped => {
                self.s(src.data).and_then(|d| media::image_dims(B64(d)))
            }
            _ => None,
        };
        let tokens = |lim: ImageLimits| match dims {
            Some((w, h)) => media::image_tokens(w, h, lim),
            // A URL or file the gateway cannot see, or an unreadable header: the largest an
            // image can cost.
            None => lim.max_tokens,
        };
        image_cost(tokens(media::STANDARD), tokens(media::HIGH_RES))
    }

    fn document(&self, src: &Source, depth: u32) -> R<Cost> {
        Ok(match self.s(src.ty).unwrap_or_default() {
            b"base64" => {
                let v = B64(self.s(src.data).unwrap_or_default());
                let pages = media::pdf_pages(v)
                    .unwrap_or_else(|| (v.len().div_ceil(PDF_BYTES_PER_PAGE)).max(1) as u64);
                Cost::flat(pages as f64 * PDF_PAGE)
            }
            b"text" => Cost::flat(self.s(src.data).map_or(0.0, text_tokens)),
            b"content" => self.content(src.content, depth + 1)?,
            _ => Cost::flat(UNSEEN_DOC_PAGES * PDF_PAGE),
        })
    }
}

fn round(t: f64) -> u64 {
    // Saturating: `as` maps NaN to 0 and clamps infinities, which is what an estimate wants.
    t.round() as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn est(s: &str) -> InputEstimate {
        estimate_input(s.as_bytes())
    }

    const SYS: &str = "You are a careful assistant for the accounts team. Answer briefly and cite the policy section you rely on.";

    #[test]
    fn key_order_and_layout_do_not_matter() {
        let a = est(&format!(
            r#"{{"model":"m","max_tokens":5,"system":"{SYS}","messages":[{{"role":"user","content":"Hello there, how are you?"}}]}}"#
        ));
        let b = est(&format!(
            "{{\n  \"messages\": [ {{ \"content\": \"Hello there, how are you?\", \"role\": \"user\" }} ],\n  \"system\": \"{SYS}\",\n  \"model\": \"m\"\n}}"
        ));
        assert!(a.parsed && b.parsed);
        assert_eq!(a.total, b.total);
        assert!(a.total > 20 && a.total < 60, "{}", a.total);
        assert_eq!(a.prefix_hash, None);
        assert_eq!(a.cached_prefix_tokens, 0);
    }

    #[test]
    fn tracking_prefixes_does_not_change_the_count() {
        // Only a body naming `cache_control` is walked with prefix tracking; the count must
        // not depend on it.
        for body in [
            format!(r#"{{"model":"m","system":"{SYS}","messages":[{{"role":"user","content":"Hi"}}]}}"#),
            format!(
                r#"{{"tools":[{{"name":"t","description":"d","input_schema":{{"type":"object"}}}}],"tool_choice":{{"type":"any"}},"system":[{{"type":"text","text":"{SYS}"}}],"messages":[{{"content":[{{"type":"text","text":"a"}},{{"type":"image","source":{{"type":"url","url":"u"}}}}],"role":"user"}},{{"role":"assistant","content":"b"}}],"model":"claude-opus-4-7"}}"#
            ),
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}"#.to_string(),
            r#"{"messages":"hi","system":42,"tools":{"a":1}}"#.to_string(),
        ] {
            let (plain, tracked) = (walk(body.as_bytes(), false), walk(body.as_bytes(), true));
            assert_eq!(plain.total, tracked.total, "{body}");
            assert_eq!(plain.breakpoints(), &[][..]);
            assert_eq!(estimate_input(body.as_bytes()), if body.contains("cache_control") { tracked } else { plain });
        }
        // The word in a text is not a breakpoint.
        let e = est(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is cache_control?"}]}]}"#,
        );
        assert!(e.parsed && e.prefix_hash.is_none());
    }

    #[test]
    fn malformed_or_hostile_bodies_fall_back() {
        for bad in [
            &b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"[..],
            b"[]",
            b"\"just a string\"",
            b"{\"messages\": [1, 2,]}",
            b"{} trailing",
            b"",
        ] {
            let e = estimate_input(bad);
            assert!(!e.parsed, "{}", String::from_utf8_lossy(bad));
            assert_eq!(e.total, (bad.len() as u64).div_ceil(4).max(1));
        }
        // Deep nesting is refused without recursing to the bottom.
        let deep = format!(
            "{{\"messages\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(!est(&deep).parsed);
        // Odd shapes that are still JSON objects are walked, never trusted.
        let e = est(r#"{"messages":"hi","system":42,"tools":{"a":1}}"#);
        assert!(e.parsed);
    }

    #[test]
    fn cache_prefix_ends_at_the_last_breakpoint_in_upstream_order() {
        // Messages come first in the body (as the Python SDK writes it); tools and system
        // still come first in the prefix.
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"What is the refund window for annual plans?"}}]}}],
               "model":"m","system":[{{"type":"text","text":"{SYS}","cache_control":{{"type":"ephemeral"}}}}],
               "tools":[{{"name":"lookup","description":"Look up a policy section.","input_schema":{{"type":"object","properties":{{"q":{{"type":"string"}}}}}}}}]}}"#
        );
        let e = est(&body);
        let h = e.prefix_hash.unwrap();
        assert_eq!(e.breakpoints().len(), 1);
        assert!(
            e.cached_prefix_tokens > 346,
            "tool prompt, tool and system are in the prefix"
        );
        assert!(e.cached_prefix_tokens < e.total);
        // Another question, same prefix: same hash and tokens.
        let other = est(&body.replace("refund window for annual plans", "price of the team plan"));
        assert_eq!(other.prefix_hash, Some(h));
        assert_eq!(other.cached_prefix_tokens, e.cached_prefix_tokens);
        // Another model, another cache.
        assert_ne!(est(&body.replace("\"m\"", "\"m2\"")).prefix_hash, Some(h));
        // Another system prompt, another prefix.
        assert_ne!(
            est(&body.replace("careful", "cheerful")).prefix_hash,
            Some(h)
        );
        // tool_choice any costs the documented 33 tokens less.
        let any = est(&body.replace(
            "\"model\":\"m\"",
            "\"model\":\"m\",\"tool_choice\":{\"type\":\"any\"}",
        ));
        assert_eq!(e.total - any.total, 33);
    }

    #[test]
    fn a_moved_breakpoint_is_found_by_lookback() {
        let turn = |q: &str, a: &str| {
            format!(
                r#"{{"role":"user","content":[{{"type":"text","text":"{q}"}}]}},{{"role":"assistant","content":"{a}"}}"#
            )
        };
        let cc = r#","cache_control":{"type":"ephemeral"}"#;
        let last = |q: &str, cached: bool| {
            format!(
                r#"{{"role":"user","content":[{{"type":"text","text":"{q}"{}}}]}}"#,
                if cached { cc } else { "" }
            )
        };
        let t1 = turn(
            "Draft a polite reminder about the unpaid invoice.",
            "Here is a draft: Dear customer, ...",
        );
        let first = est(&format!(
            r#"{{"model":"m","system":"{SYS}","messages":[{t1},{}]}}"#,
            last("Make it shorter.", true)
        ));
        // The next turn: the old breakpoint lost its marker, a new one sits on the new question.
        let second = est(&format!(
            r#"{{"model":"m","system":"{SYS}","messages":[{t1},{},{{"role":"assistant","content":"Dear customer, please pay invoice 42."}},{}]}}"#,
            last("Make it shorter.", false),
            last("Now translate it to German.", true)
        ));
        let written = first.breakpoints()[0];
        assert_ne!(second.prefix_hash, Some(written.hash));
        let hit = second.lookback().iter().find(|p| p.hash == written.hash);
        assert_eq!(
            hit.copied(),
            Some(written),
            "lookback: {:?}",
            second.lookback()
        );
        assert!(second.cached_prefix_tokens > written.tokens);
    }

    #[test]
    fn images_documents_and_models() {
        let url = est(
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}"#,
        );
        let hi = est(
            r#"{"model":"claude-opus-4-7","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}"#,
        );
        assert!((1600..1620).contains(&url.total), "{}", url.total);
        assert!((4784..4810).contains(&hi.total), "{}", hi.total);
        // A 2×2 PNG, its header readable through base64.
        let png = est(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMAAAA0ABAUqn9eGAAAAAElFTkSuQmCC"}}]}]}"#,
        );
        assert!(png.total < 20, "{}", png.total);
        let pdf_url = est(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://example.com/a.pdf"}}]}]}"#,
        );
        assert!(pdf_url.total >= 5 * 2250);
    }
}
