//! Automatic prompt caching: where `cache_control` markers can go in a raw Messages body, and
//! the byte-preserving edit that puts them there.
//!
//! The upstream writes a prompt-cache entry only at a breakpoint (a block carrying
//! `cache_control`, or, on the Anthropic API and Vertex, the last cacheable block when the body
//! has a top-level `cache_control`), and looks entries up only at breakpoints. A request may
//! carry at most 4 breakpoints (the automatic one counts), and when TTLs are mixed the 1-hour
//! entries must come before the 5-minute ones in prompt order (tools, system, messages). A
//! client that placed its own markers knows its prompt better than the gateway, so a body with
//! any marker is never edited.
//!
//! [`layout`] walks the body once, without building it, and finds the points a marker can go:
//! the top-level object, the last tool, the last cacheable `system` block and the last
//! cacheable block of the last user turn, each with the offset where the prefix it closes ends
//! (so the caller can compare the prefix to the model's minimum cacheable length). [`apply`]
//! then only inserts bytes: every byte of the input stays, in order, and a string `system` or
//! string message `content` is wrapped into a one-text-block array around its original,
//! still-escaped bytes. Nothing is ever re-serialised, so what the client sent is what the
//! upstream reads, plus the markers.
//!
//! The walk is a small strict JSON reader of its own rather than serde visitors like
//! [`crate::request`]: the edit needs the offset of each closing `}`, which serde does not
//! report, and being strict (escapes, numbers, control bytes, trailing bytes) means a body it
//! accepts is JSON, so the edited body is JSON too. [`Plan::anthropic`] and [`Plan::bedrock`]
//! give the two provider forms: Bedrock refuses a top-level `cache_control`, so it gets an
//! explicit breakpoint on the last user turn instead.

/// Deepest nesting of arrays and objects walked; deeper bodies are refused (bounds recursion,
/// and stays under serde_json's own limit so whatever is accepted here parses there too).
const MAX_DEPTH: u32 = 100;

/// Most breakpoints the upstream accepts in one request.
pub const MAX_BREAKPOINTS: usize = 4;

/// Why a body has no layout. The caller then forwards it as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not valid JSON (the offset is where reading stopped).
    #[error("request body is not valid JSON (at byte {at})")]
    Malformed {
        /// Byte offset of the first byte that could not be read.
        at: usize,
    },
    /// Valid JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// Nested deeper than the walker goes.
    #[error("request body is nested too deeply")]
    TooDeep,
    /// A top-level field the edit depends on appears twice: which one the upstream reads is
    /// not certain, so neither is edited.
    #[error("{field}: must not be repeated")]
    Repeated {
        /// The field name.
        field: &'static str,
    },
}

/// How long a cache entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ttl {
    /// The upstream's default, written without a `ttl`.
    FiveMinutes,
    /// `"ttl":"1h"`.
    OneHour,
}

/// One `cache_control` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Marker {
    /// Its lifetime.
    pub ttl: Ttl,
}

impl Marker {
    /// The member as inserted, without a separating comma.
    pub fn member(&self) -> &'static [u8] {
        match self.ttl {
            Ttl::FiveMinutes => br#""cache_control":{"type":"ephemeral"}"#,
            Ttl::OneHour => br#""cache_control":{"type":"ephemeral","ttl":"1h"}"#,
        }
    }
}

/// The places a marker can go, in prompt order (the automatic one lands on the last cacheable
/// block, so it comes last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spot {
    /// The end of `tools`: its last element.
    Tools,
    /// The end of `system`.
    System,
    /// The last cacheable block of the last `user` message.
    LastUser,
    /// A top-level `cache_control`: automatic caching (Anthropic API and Vertex only).
    TopLevel,
}

impl Spot {
    /// Every spot, in prompt order.
    pub const ALL: [Spot; 4] = [Spot::Tools, Spot::System, Spot::LastUser, Spot::TopLevel];
}

/// How a marker is put at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An object: the marker becomes its last member, inserted just before its closing `}`.
    Member {
        /// Offset of the closing `}`.
        close: usize,
        /// The object has no members (no comma before the marker).
        empty: bool,
    },
    /// A string (`system` or a message's `content`) that becomes
    /// `[{"type":"text","text":<the string>,<marker>}]`.
    Wrap {
        /// Offset of the opening quote.
        start: usize,
        /// Offset just past the closing quote.
        end: usize,
    },
}

/// A point where a marker can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakpoint {
    /// Where and how the marker goes.
    pub target: Target,
    /// Offset just past the block the marker would close (the end of that block in the body).
    pub prefix_end: usize,
    /// The block carries a `cache_control` of its own already.
    pub marked: bool,
}

/// What [`layout`] finds in a Messages body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLayout {
    len: usize,
    has_marker: bool,
    top_level: Breakpoint,
    /// The client's own top-level `cache_control`: offsets of its key, and of its value's
    /// start and end.
    top_marker: Option<(usize, usize, usize)>,
    tools: Option<Breakpoint>,
    system: Option<Breakpoint>,
    last_user: Option<Breakpoint>,
    /// Body ranges of the `tools`, `system` and `messages` values, for prefix sizes in prompt
    /// order whatever the key order of the body.
    sections: [Option<(usize, usize)>; 3],
}

impl CacheLayout {
    /// The body carries a `cache_control` somewhere the upstream reads one: at top level, on a
    /// tool, on a `system` block or on a content block of a message (also inside a
    /// `tool_result`'s or a document's content). Such a body is left as it is.
    pub fn has_marker(&self) -> bool {
        self.has_marker
    }

    /// The point for `spot`, when the body has one (the top level always does).
    pub fn breakpoint(&self, spot: Spot) -> Option<Breakpoint> {
        match spot {
            Spot::TopLevel => Some(self.top_level),
            Spot::Tools => self.tools,
            Spot::System => self.system,
            Spot::LastUser => self.last_user,
        }
    }

    /// Bytes of the body that make up the prompt prefix up to and including the block at
    /// `spot`, counted in the upstream's order (all of `tools`, then `system`, then
    /// `messages`) whatever the order of the body's keys; for [`Spot::TopLevel`], all three.
    /// A rough measure for comparing against a model's minimum cacheable length.
    pub fn prefix_bytes(&self, spot: Spot) -> Option<usize> {
        let len = |i: usize| self.sections[i].map_or(0, |(s, e)| e - s);
        let upto = |i: usize, bp: Option<Breakpoint>| -> Option<usize> {
            let (start, _) = self.sections[i]?;
            Some(bp?.prefix_end.saturating_sub(start))
        };
        match spot {
            Spot::Tools => upto(0, self.tools),
            Spot::System => Some(len(0) + upto(1, self.system)?),
            Spot::LastUser => Some(len(0) + len(1) + upto(2, self.last_user)?),
            Spot::TopLevel => Some(len(0) + len(1) + len(2)),
        }
    }
}

/// Why a [`Plan`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// More markers than the upstream accepts.
    #[error("at most {MAX_BREAKPOINTS} cache breakpoints")]
    TooMany,
    /// The same spot twice.
    #[error("{0:?} is planned twice")]
    Repeated(Spot),
    /// A 1-hour marker after a 5-minute one in prompt order, which the upstream refuses.
    #[error("1-hour cache entries must come before 5-minute ones")]
    TtlOrder,
}

/// Which spots get a marker, and with which TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexed like [`Spot::ALL`].
    marks: [Option<Marker>; 4],
}

impl Plan {
    /// A plan of the given markers: at most [`MAX_BREAKPOINTS`], each spot once, and no 1-hour
    /// marker after a 5-minute one in prompt order.
    pub fn new(marks: &[(Spot, Marker)]) -> Result<Plan, PlanError> {
        if marks.len() > MAX_BREAKPOINTS {
            return Err(PlanError::TooMany);
        }
        let mut plan = Plan::default();
        for &(spot, marker) in marks {
            let slot = &mut plan.marks[index(spot)];
            if slot.is_some() {
                return Err(PlanError::Repeated(spot));
            }
            *slot = Some(marker);
        }
        let ttls = plan.marks.iter().flatten().map(|m| m.ttl);
        if ttls
            .clone()
            .zip(ttls.skip(1))
            .any(|(a, b)| a == Ttl::FiveMinutes && b == Ttl::OneHour)
        {
            return Err(PlanError::TtlOrder);
        }
        Ok(plan)
    }

    /// The Anthropic API (and Vertex) form: automatic caching for the conversation tail, plus
    /// explicit breakpoints at the end of `tools` and of `system` where asked.
    pub fn anthropic(ttl: Ttl, tools: bool, system: bool) -> Plan {
        let m = Some(Marker { ttl });
        let on = |b: bool| if b { m } else { None };
        Plan {
            marks: [on(tools), on(system), None, m],
        }
    }

    /// The Bedrock form, which has no top-level `cache_control`: explicit breakpoints only,
    /// the last user turn standing in for automatic caching.
    pub fn bedrock(ttl: Ttl, tools: bool, system: bool, last_user: bool) -> Plan {
        let m = Some(Marker { ttl });
        let on = |b: bool| if b { m } else { None };
        Plan {
            marks: [on(tools), on(system), on(last_user), None],
        }
    }

    /// The marker planned at `spot`.
    pub fn marker(&self, spot: Spot) -> Option<Marker> {
        self.marks[index(spot)]
    }

    /// How many markers the plan holds.
    pub fn len(&self) -> usize {
        self.marks.iter().flatten().count()
    }

    /// The plan holds no marker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn index(spot: Spot) -> usize {
    match spot {
        Spot::Tools => 0,
        Spot::System => 1,
        Spot::LastUser => 2,
        Spot::TopLevel => 3,
    }
}

/// Where markers can go in `body`, found in one pass without building the JSON.
///
/// Only structure counts: a `"cache_control"` inside a string, in a tool's `input_schema` or in
/// a `tool_use` input is not a marker. A `cache_control` key counts whatever its value, even
/// `null`, since adding a marker there would repeat the key. Blocks the upstream refuses a
/// marker on (`thinking`, `redacted_thinking`, empty `text`) are passed over for an earlier
/// block of the same list; an empty string `system` or `content` has no point.
pub fn layout(body: &[u8]) -> Result<CacheLayout, LayoutError> {
    // The JSON grammar requires UTF-8 throughout; checking once here keeps the walk bytewise.
    std::str::from_utf8(body).map_err(|e| LayoutError::Malformed {
        at: e.valid_up_to(),
    })?;
    walk(body)
}

/// [`layout`] of a body already parsed as `_parsed` ([`crate::parse_message_request`], which
/// checks the whole body is UTF-8 first): the same walk without checking the UTF-8 again, a
/// pass over the body the request path would otherwise make twice.
pub fn layout_of_parsed(
    body: &[u8],
    _parsed: &crate::MessageRequest,
) -> Result<CacheLayout, LayoutError> {
    walk(body)
}

fn walk(body: &[u8]) -> Result<CacheLayout, LayoutError> {
    let mut c = Cur { b: body, i: 0 };
    if c.peek() != Some(b'{') {
        // A syntax error wins over the wrong kind of value, as in the request parser.
        c.skip(0)?;
        c.end()?;
        return Err(LayoutError::NotAnObject);
    }
    let mut f = Found::default();
    let mut seen = [false; 3];
    let mut repeated = None;
    let mut sections = [None; 3];
    let (mut tools, mut system, mut last_user) = (None, None, None);
    let mut top_marker = None;
    let top = c.object(0, |c, key, d| {
        let slot = if c.is(key, b"tools") {
            0
        } else if c.is(key, b"system") {
            1
        } else if c.is(key, b"messages") {
            2
        } else {
            if c.is(key, b"cache_control") {
                f.marker = true;
                let value = c.at();
                c.skip(d)?;
                top_marker = Some((key.start, value, c.i));
                return Ok(());
            }
            return c.skip(d);
        };
        if std::mem::replace(&mut seen[slot], true) {
            repeated.get_or_insert(["tools", "system", "messages"][slot]);
        }
        let start = c.at();
        match slot {
            0 => tools = tools_at(c, d, &mut f)?,
            1 => system = system_at(c, d, &mut f)?,
            _ => last_user = messages_at(c, d, &mut f)?,
        }
        sections[slot] = Some((start, c.i));
        Ok(())
    })?;
    c.end()?;
    if let Some(field) = repeated {
        return Err(LayoutError::Repeated { field });
    }
    Ok(CacheLayout {
        len: body.len(),
        has_marker: f.marker,
        top_level: Breakpoint {
            marked: top_marker.is_some(),
            ..member(top)
        },
        top_marker,
        tools,
        system,
        last_user,
        sections,
    })
}

/// `body` with a marker at each planned spot the layout has: insertions only, every input byte
/// kept in order, one allocation. A body that already carries a marker, or a layout of another
/// body, gives the body unchanged.
pub fn apply(body: &[u8], layout: &CacheLayout, plan: &Plan) -> Vec<u8> {
    if layout.has_marker || layout.len != body.len() {
        return body.to_vec();
    }
    let (ins, n) = insertions(layout, plan);
    let ins = &ins[..n];
    let extra: usize = ins.iter().flat_map(|i| i.bytes).map(<[u8]>::len).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut from = 0;
    for i in ins {
        out.extend_from_slice(&body[from..i.at]);
        for b in i.bytes {
            out.extend_from_slice(b);
        }
        from = i.at;
    }
    out.extend_from_slice(&body[from..]);
    out
}

/// How many bytes [`apply`] inserts before offset `at` of the body `layout` describes, so an
/// offset into the original body (e.g. the `model` value's, for a later model swap) can be
/// carried over to the edited one: it moves to `at + inserted_before(..)`. Exact for an offset
/// outside the planned blocks (a top-level value other than `tools`, `system` and `messages`);
/// 0 when [`apply`] would not edit.
pub fn inserted_before(layout: &CacheLayout, plan: &Plan, at: usize) -> usize {
    if layout.has_marker {
        return 0;
    }
    let (ins, n) = insertions(layout, plan);
    ins[..n]
        .iter()
        .filter(|i| i.at <= at)
        .flat_map(|i| i.bytes)
        .map(<[u8]>::len)
        .sum()
}

/// An insertion of [`top_level_to_explicit`]: at an offset, three byte strings in order.
type Piece<'a> = (usize, &'a [u8], &'a [u8], &'a [u8]);

/// `body` in the form of a provider that refuses a top-level `cache_control` (Bedrock): the
/// client's own top-level marker (automatic caching, which puts the breakpoint on the last
/// cacheable block) is moved, value and TTL unchanged, onto the last cacheable block of the
/// last user turn, the explicit breakpoint standing for it; when that block has a marker of its
/// own, or there is none, the top-level one is only dropped. The marker count never grows and
/// the moved one stays last in prompt order, so the limit of 4 and the TTL order still hold.
/// Every other byte is kept. `None` when the body has no top-level marker (or is not read):
/// it is then sent as it is.
pub fn top_level_to_explicit(body: &[u8]) -> Option<Vec<u8>> {
    // Most bodies have no marker at all: one SIMD search instead of a walk.
    memchr::memmem::find(body, b"cache_control")?;
    let l = layout(body).ok()?;
    let (key, value_start, value_end) = l.top_marker?;
    let value = body.get(value_start..value_end)?;
    let ws = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    // The member goes with one of its commas: the one before it, else the one after it.
    let before = body.get(..key)?.iter().rposition(|&b| !ws(b))?;
    let cut = if body.get(before) == Some(&b',') {
        before..value_end
    } else {
        let after = body
            .get(value_end..)?
            .iter()
            .position(|&b| !ws(b))
            .map_or(value_end, |n| value_end + n);
        if body.get(after) == Some(&b',') {
            key..after + 1
        } else {
            key..value_end
        }
    };
    let mut out = Vec::with_capacity(body.len() + 40);
    // (offset, bytes to insert there); unused slots stay at usize::MAX.
    let mut pieces: [Piece<'_>; 2] = [(usize::MAX, b"", b"", b""); 2];
    match l.last_user.filter(|bp| !bp.marked).map(|bp| bp.target) {
        Some(Target::Member { close, empty }) => {
            let comma: &[u8] = if empty { b"" } else { b"," };
            pieces[0] = (close, comma, br#""cache_control":"#, value);
        }
        Some(Target::Wrap { start, end }) => {
            pieces[0] = (start, br#"[{"type":"text","text":"#, b"", b"");
            pieces[1] = (end, br#","cache_control":"#, value, b"}]");
        }
        None => {}
    }
    let mut from = 0;
    let mut emit = |out: &mut Vec<u8>, upto: usize| {
        // Copy up to `upto`, leaving out the cut member.
        if from < cut.start {
            out.extend_from_slice(body.get(from..upto.min(cut.start)).unwrap_or_default());
        }
        if upto > cut.end {
            out.extend_from_slice(body.get(from.max(cut.end)..upto).unwrap_or_default());
        }
        from = upto;
    };
    for (at, a, b, c) in pieces.into_iter().filter(|p| p.0 != usize::MAX) {
        emit(&mut out, at);
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        out.extend_from_slice(c);
    }
    emit(&mut out, body.len());
    Some(out)
}

/// The insertions of `plan` into the body `layout` describes, sorted by offset: at most two
/// per spot.
fn insertions(layout: &CacheLayout, plan: &Plan) -> ([Insert; 8], usize) {
    // Ordered by offset, then by `rank` at one offset: a wrapped string's tail, which closes
    // the value, before a member added to the object holding it. No two insertions share both.
    let mut ins = [Insert::default(); 8];
    let mut n = 0;
    let mut put = |at: usize, rank: u8, bytes: [&'static [u8]; 3]| {
        ins[n] = Insert { at, rank, bytes };
        n += 1;
    };
    for spot in Spot::ALL {
        let (Some(m), Some(bp)) = (plan.marker(spot), layout.breakpoint(spot)) else {
            continue;
        };
        match bp.target {
            Target::Member { close, empty } => {
                put(close, 1, [if empty { b"" } else { b"," }, m.member(), b""]);
            }
            Target::Wrap { start, end } => {
                put(start, 0, [br#"[{"type":"text","text":"#, b"", b""]);
                put(end, 0, [b",", m.member(), b"}]"]);
            }
        }
    }
    // Unstable sort needs no scratch buffer, so the output stays the one allocation.
    ins[..n].sort_unstable_by_key(|i| (i.at, i.rank));
    (ins, n)
}

/// Bytes to insert before `body[at]`.
#[derive(Clone, Copy, Default)]
struct Insert {
    at: usize,
    rank: u8,
    bytes: [&'static [u8]; 3],
}

// ---------------------------------------------------------------------------------------
// The walk.

/// Facts gathered over the whole body.
#[derive(Default)]
struct Found {
    marker: bool,
}

fn member(o: Obj) -> Breakpoint {
    Breakpoint {
        target: Target::Member {
            close: o.close,
            empty: o.empty,
        },
        prefix_end: o.close + 1,
        marked: false,
    }
}

/// A string's token: `start` at the opening quote, `end` just past the closing one.
#[derive(Clone, Copy)]
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Str {
    fn wrap(self) -> Option<Breakpoint> {
        // An empty text block is refused with a marker on it.
        (self.end - self.start > 2).then_some(Breakpoint {
            target: Target::Wrap {
                start: self.start,
                end: self.end,
            },
            prefix_end: self.end,
            marked: false,
        })
    }
}

/// An object's closing brace and whether it had members.
#[derive(Clone, Copy)]
struct Obj {
    close: usize,
    empty: bool,
}

/// `tools`: its last element, when that is an object.
fn tools_at(c: &mut Cur<'_>, d: u32, f: &mut Found) -> R<Option<Breakpoint>> {
    if c.peek() != Some(b'[') {
        return c.skip(d).map(|()| None);
    }
    let mut last = None;
    c.array(d, |c, d| {
        last = if c.peek() == Some(b'{') {
            // Only the tool's own `cache_control`: its `input_schema` may well describe a
            // property of that name.
            let o = c.object(d, |c, k, d| {
                if c.is(k, b"cache_control") {
                    f.marker = true;
                }
                c.skip(d)
            })?;
            Some(member(o))
        } else {
            c.skip(d)?;
            None
        };
        Ok(())
    })?;
    Ok(last)
}

/// `system`: a string is wrapped, a list of blocks gets the marker on its last cacheable one.
fn system_at(c: &mut Cur<'_>, d: u32, f: &mut Found) -> R<Option<Breakpoint>> {
    match c.peek() {
        Some(b'"') => Ok(c.string()?.wrap()),
        Some(b'[') => blocks_at(c, d, f),
        _ => c.skip(d).map(|()| None),
    }
}

/// `messages`: the point of the last `user` message (`None` if it has no cacheable block).
fn messages_at(c: &mut Cur<'_>, d: u32, f: &mut Found) -> R<Option<Breakpoint>> {
    if c.peek() != Some(b'[') {
        return c.skip(d).map(|()| None);
    }
    let mut last_user = None;
    c.array(d, |c, d| {
        if c.peek() != Some(b'{') {
            return c.skip(d);
        }
        // Keys come in any order, so the content's point is found before the role is known.
        let (mut user, mut point) = (false, None);
        c.object(d, |c, k, d| {
            if c.is(k, b"role") {
                user = false;
                if c.peek() == Some(b'"') {
                    let s = c.string()?;
                    user = c.is(s, b"user");
                    Ok(())
                } else {
                    c.skip(d)
                }
            } else if c.is(k, b"content") {
                point = match c.peek() {
                    Some(b'"') => c.string()?.wrap(),
                    Some(b'[') => blocks_at(c, d, f)?,
                    _ => {
                        c.skip(d)?;
                        None
                    }
                };
                Ok(())
            } else {
                c.skip(d)
            }
        })?;
        if user {
            last_user = point;
        }
        Ok(())
    })?;
    Ok(last_user)
}

/// What a content block's type allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// `thinking` / `redacted_thinking`: the upstream refuses `cache_control` on them.
    Thinking,
    Other,
}

/// A list of content blocks: the last one that may carry a marker. Markers anywhere in it,
/// nested content included, are noted.
fn blocks_at(c: &mut Cur<'_>, d: u32, f: &mut Found) -> R<Option<Breakpoint>> {
    if c.peek() != Some(b'[') {
        return c.skip(d).map(|()| None);
    }
    let mut last = None;
    c.array(d, |c, d| {
        if c.peek() != Some(b'{') {
            return c.skip(d);
        }
        let (mut kind, mut empty_text, mut marked) = (Kind::Other, false, false);
        let o = c.object(d, |c, k, d| {
            if c.is(k, b"cache_control") {
                f.marker = true;
                marked = true;
                c.skip(d)
            } else if c.is(k, b"type") {
                kind = Kind::Other;
                if c.peek() == Some(b'"') {
                    let s = c.string()?;
                    if c.is(s, b"text") {
                        kind = Kind::Text;
                    } else if c.is(s, b"thinking") || c.is(s, b"redacted_thinking") {
                        kind = Kind::Thinking;
                    }
                    Ok(())
                } else {
                    c.skip(d)
                }
            } else if c.is(k, b"text") {
                empty_text = false;
                if c.peek() == Some(b'"') {
                    let s = c.string()?;
                    empty_text = s.end - s.start == 2;
                    Ok(())
                } else {
                    c.skip(d)
                }
            } else if c.is(k, b"content") {
                // A `tool_result` or `search_result` holds blocks of its own.
                blocks_at(c, d, f).map(|_| ())
            } else if c.is(k, b"source") && c.peek() == Some(b'{') {
                // A document whose source is `{"type":"content","content":[blocks]}`.
                c.object(d, |c, k, d| {
                    if c.is(k, b"content") {
                        blocks_at(c, d, f).map(|_| ())
                    } else {
                        c.skip(d)
                    }
                })
                .map(|_| ())
            } else {
                c.skip(d)
            }
        })?;
        if kind != Kind::Thinking && !(kind == Kind::Text && empty_text) {
            last = Some(Breakpoint {
                marked,
                ..member(o)
            });
        }
        Ok(())
    })?;
    Ok(last)
}

// ---------------------------------------------------------------------------------------
// The cursor: a strict JSON reader over bytes already known to be UTF-8.

type R<T> = Result<T, LayoutError>;

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn bad<T>(&self) -> R<T> {
        Err(LayoutError::Malformed { at: self.i })
    }

    /// The next byte after whitespace, not consumed.
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

    /// Offset of the next value.
    fn at(&mut self) -> usize {
        self.peek();
        self.i
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.bad()
        }
    }

    /// Only whitespace left.
    fn end(&mut self) -> R<()> {
        if self.peek().is_some() {
            self.bad()
        } else {
            Ok(())
        }
    }

    /// Whether the string token `s` decodes to `want` (ASCII).
    fn is(&self, s: Str, want: &[u8]) -> bool {
        let inner = &self.b[s.start + 1..s.end - 1];
        if !s.escaped {
            return inner == want;
        }
        decoded_eq(inner, want)
    }

    fn string(&mut self) -> R<Str> {
        self.expect(b'"')?;
        let start = self.i - 1;
        let mut escaped = false;
        loop {
            // Prompts are mostly long strings: jump to the next quote or backslash (SIMD), and
            // check the bytes jumped over for control bytes in one branch-free pass, instead of
            // matching byte by byte.
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(n) = memchr::memchr2(b'"', b'\\', rest) else {
                return self.bad();
            };
            let run = rest.get(..n).unwrap_or_default();
            if run.iter().fold(false, |acc, &c| acc | (c < 0x20)) {
                self.i += run.iter().position(|&c| c < 0x20).unwrap_or(0);
                return self.bad();
            }
            self.i += n;
            let Some(&c) = self.b.get(self.i) else {
                return self.bad();
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Str {
                        start,
                        end: self.i,
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.i += 2;
                        }
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.i += 2;
                                return self.bad();
                            }
                            self.i += 6;
                        }
                        _ => {
                            self.i += 1;
                            return self.bad();
                        }
                    }
                }
                // memchr2 stopped on one of the two.
                _ => return self.bad(),
            }
        }
    }

    fn skip(&mut self, d: u32) -> R<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => self.object(d, |c, _, d| c.skip(d)).map(|_| ()),
            Some(b'[') => self.array(d, |c, d| c.skip(d)),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.bad(),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            self.bad()
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> R<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.bad(),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return self.bad();
            }
            self.digits();
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return self.bad();
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    /// An object at nesting `d`: `f` gets each key and must consume its value (at `d + 1`).
    fn object(&mut self, d: u32, mut f: impl FnMut(&mut Self, Str, u32) -> R<()>) -> R<Obj> {
        if d >= MAX_DEPTH {
            return Err(LayoutError::TooDeep);
        }
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            let close = self.i;
            self.i += 1;
            return Ok(Obj { close, empty: true });
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.bad();
            }
            let key = self.string()?;
            self.expect(b':')?;
            f(self, key, d + 1)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    let close = self.i;
                    self.i += 1;
                    return Ok(Obj {
                        close,
                        empty: false,
                    });
                }
                _ => return self.bad(),
            }
        }
    }

    /// An array at nesting `d`: `f` must consume each element (at `d + 1`).
    fn array(&mut self, d: u32, mut f: impl FnMut(&mut Self, u32) -> R<()>) -> R<()> {
        if d >= MAX_DEPTH {
            return Err(LayoutError::TooDeep);
        }
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self, d + 1)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.bad(),
            }
        }
    }
}

/// Whether the inside of a string holding escapes decodes to the ASCII `want` (the escapes are
/// already known to be well formed).
fn decoded_eq(inner: &[u8], want: &[u8]) -> bool {
    let (mut i, mut k) = (0, 0);
    while i < inner.len() {
        let c = if inner[i] == b'\\' {
            let e = inner.get(i + 1).copied().unwrap_or(0);
            i += 2;
            match e {
                b'u' => {
                    let v = inner
                        .get(i..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    i += 4;
                    match v {
                        Some(v) if v.is_ascii() => v,
                        _ => return false,
                    }
                }
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                other => other,
            }
        } else {
            i += 1;
            inner[i - 1]
        };
        if want.get(k) != Some(&c) {
            return false;
        }
        k += 1;
    }
    k == want.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_top_level_marker_moves_to_the_last_user_turn_for_bedrock() {
        let moved =
            |b: &str| top_level_to_explicit(b.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        // A later member: it goes with the comma before it; a string content is wrapped.
        assert_eq!(
            moved(r#"{"model":"m","cache_control":{"type":"ephemeral","ttl":"1h"},"messages":[{"role":"user","content":"hi"}]}"#).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral","ttl":"1h"}}]}]}"#
        );
        // The first member: it goes with the comma after it; a block gets the member.
        assert_eq!(
            moved(r#"{"cache_control":{"type":"ephemeral"}, "model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"assistant","content":"b"}]}"#).unwrap(),
            r#"{ "model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]},{"role":"assistant","content":"b"}]}"#
        );
        // The only member besides nothing else to mark: dropped.
        assert_eq!(
            moved(r#"{"cache_control":{"type":"ephemeral"}}"#).unwrap(),
            "{}"
        );
        // The last user block has its own marker: the top-level one is only dropped.
        assert_eq!(
            moved(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}],"cache_control":{"type":"ephemeral"}}"#).unwrap(),
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}"#
        );
        // No top-level marker (a block's own only, or none): nothing to do.
        assert!(moved(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}"#).is_none());
        assert!(moved(r#"{"messages":[{"role":"user","content":"a"}]}"#).is_none());
        // What comes out is read again as JSON with the marker where Bedrock takes it.
        let out = moved(r#"{"system":"s","cache_control":{"type":"ephemeral"},"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("cache_control").is_none());
        assert_eq!(
            v["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
    }

    const M5: Marker = Marker {
        ttl: Ttl::FiveMinutes,
    };
    const H1: Marker = Marker { ttl: Ttl::OneHour };

    fn lay(body: &str) -> CacheLayout {
        layout(body.as_bytes()).unwrap()
    }

    fn all(ttl: Ttl) -> Plan {
        let m = Marker { ttl };
        Plan::new(&Spot::ALL.map(|s| (s, m))).unwrap()
    }

    fn edit(body: &str, plan: &Plan) -> String {
        let l = lay(body);
        String::from_utf8(apply(body.as_bytes(), &l, plan)).unwrap()
    }

    #[test]
    fn inserted_before_carries_a_top_level_offset_over_to_the_edited_body() {
        // The model before, between and after the edited sections.
        for body in [
            r#"{"model":"m-1","tools":[{"name":"t"}],"system":"s","messages":[{"role":"user","content":"u"}]}"#,
            r#"{"tools":[{"name":"t"}],"model":"m-1","system":"s","messages":[{"role":"user","content":"u"}]}"#,
            r#"{"tools":[{"name":"t"}],"system":"s","messages":[{"role":"user","content":"u"}],"model":"m-1"}"#,
        ] {
            let l = lay(body);
            let at = body.find(r#""m-1""#).unwrap();
            for plan in [
                all(Ttl::OneHour),
                Plan::bedrock(Ttl::FiveMinutes, false, true, true),
            ] {
                let out = String::from_utf8(apply(body.as_bytes(), &l, &plan)).unwrap();
                let moved = at + inserted_before(&l, &plan, at);
                assert_eq!(&out[moved..moved + 5], r#""m-1""#, "{body} -> {out}");
            }
        }
        let marked = r#"{"system":[{"type":"text","text":"s","cache_control":{}}],"model":"m"}"#;
        assert_eq!(inserted_before(&lay(marked), &all(Ttl::FiveMinutes), 60), 0);
    }

    #[test]
    fn string_system_is_wrapped_around_its_raw_bytes() {
        let body = r#"{"model":"m","system":"caf\u00e9 \"q\" \n","messages":[]}"#;
        assert_eq!(
            edit(body, &Plan::anthropic(Ttl::FiveMinutes, false, true)),
            r#"{"model":"m","system":[{"type":"text","text":"caf\u00e9 \"q\" \n","cache_control":{"type":"ephemeral"}}],"messages":[],"cache_control":{"type":"ephemeral"}}"#
        );
    }

    #[test]
    fn array_system_gets_the_marker_on_its_last_non_empty_block() {
        let body = r#"{"system":[{"type":"text","text":"a"},{"type":"text","text":"b"},{"text":"","type":"text"}]}"#;
        let l = lay(body);
        let bp = l.breakpoint(Spot::System).unwrap();
        assert_eq!(
            &body[..bp.prefix_end],
            r#"{"system":[{"type":"text","text":"a"},{"type":"text","text":"b"}"#
        );
        assert_eq!(
            edit(body, &Plan::bedrock(Ttl::OneHour, false, true, false)),
            r#"{"system":[{"type":"text","text":"a"},{"type":"text","text":"b","cache_control":{"type":"ephemeral","ttl":"1h"}},{"text":"","type":"text"}]}"#
        );
    }

    #[test]
    fn empty_tools_no_messages_and_empty_strings_have_no_points() {
        let l = lay(r#"{"tools":[],"system":"","messages":[]}"#);
        for spot in [Spot::Tools, Spot::System, Spot::LastUser] {
            assert_eq!(l.breakpoint(spot), None, "{spot:?}");
        }
        let l = lay(r#"{"model":"m","messages":[{"role":"user","content":""}]}"#);
        assert_eq!(l.breakpoint(Spot::LastUser), None);
        let l = lay(r#"{"model":"m"}"#);
        assert_eq!(l.breakpoint(Spot::LastUser), None);
        assert_eq!(l.prefix_bytes(Spot::TopLevel), Some(0));
    }

    #[test]
    fn last_tool_gets_a_member() {
        let body = r#"{"tools":[{"name":"a"},{"name":"b","input_schema":{"type":"object"}}]}"#;
        assert_eq!(
            edit(body, &Plan::bedrock(Ttl::FiveMinutes, true, false, false)),
            r#"{"tools":[{"name":"a"},{"name":"b","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral"}}]}"#
        );
    }

    #[test]
    fn empty_objects_take_the_member_without_a_comma() {
        assert_eq!(
            edit("{}", &all(Ttl::FiveMinutes)),
            r#"{"cache_control":{"type":"ephemeral"}}"#
        );
        assert_eq!(
            edit(" {\n\t} \n", &all(Ttl::OneHour)),
            " {\n\t\"cache_control\":{\"type\":\"ephemeral\",\"ttl\":\"1h\"}} \n"
        );
        assert_eq!(
            edit(
                r#"{"tools":[{}]}"#,
                &Plan::bedrock(Ttl::FiveMinutes, true, false, false)
            ),
            r#"{"tools":[{"cache_control":{"type":"ephemeral"}}]}"#
        );
    }

    #[test]
    fn pretty_json_keeps_every_byte() {
        let body = "{\n  \"messages\" : [\n    {\n      \"content\" : \"hi\" ,\n      \"role\" : \"user\"\n    }\n  ] ,\n  \"system\" : [ { \"type\" : \"text\" , \"text\" : \"s\" }\n  ]\n}\n";
        let out = edit(body, &all(Ttl::FiveMinutes));
        assert_eq!(
            out,
            "{\n  \"messages\" : [\n    {\n      \"content\" : [{\"type\":\"text\",\"text\":\"hi\",\"cache_control\":{\"type\":\"ephemeral\"}}] ,\n      \"role\" : \"user\"\n    }\n  ] ,\n  \"system\" : [ { \"type\" : \"text\" , \"text\" : \"s\" ,\"cache_control\":{\"type\":\"ephemeral\"}}\n  ]\n,\"cache_control\":{\"type\":\"ephemeral\"}}\n"
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
    }

    #[test]
    fn a_wrapped_string_right_before_the_closing_brace_closes_first() {
        let body = r#"{"system":"s"}"#;
        assert_eq!(
            edit(body, &all(Ttl::FiveMinutes)),
            r#"{"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}],"cache_control":{"type":"ephemeral"}}"#
        );
    }

    #[test]
    fn last_user_turn_skips_uncacheable_blocks_and_later_assistant_turns() {
        let body = r#"{"messages":[
            {"role":"user","content":"first"},
            {"content":[{"type":"text","text":"q"},{"type":"thinking","thinking":"t"},{"type":"text","text":""}],"role":"user"},
            {"role":"assistant","content":[{"type":"redacted_thinking","data":"x"},{"type":"text","text":"prefill"}]}
        ]}"#;
        let l = lay(body);
        let bp = l.breakpoint(Spot::LastUser).unwrap();
        assert!(body[..bp.prefix_end].ends_with(r#"{"type":"text","text":"q"}"#));
        let thinking_only = r#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":[{"type":"thinking","thinking":"t"}]}]}"#;
        assert_eq!(lay(thinking_only).breakpoint(Spot::LastUser), None);
    }

    #[test]
    fn cache_control_inside_strings_schemas_and_tool_inputs_is_not_a_marker() {
        let body = r#"{"cache_control_x":1,"system":"\"cache_control\":{}",
            "tools":[{"name":"t","input_schema":{"properties":{"cache_control":{"type":"string"}}}}],
            "metadata":{"cache_control":{"type":"ephemeral"}},
            "messages":[{"role":"assistant","content":[{"type":"tool_use","id":"1","name":"t","input":{"cache_control":"x"}}]},
                        {"role":"user","content":[{"type":"text","text":"\"cache_control\": {\"type\":\"ephemeral\"}"}]}]}"#;
        assert!(!lay(body).has_marker());
    }

    #[test]
    fn any_real_marker_is_found() {
        for body in [
            r#"{"cache_control":{"type":"ephemeral"}}"#,
            r#"{"cache_control":null}"#,
            r#"{"tools":[{"name":"a","cache_control":{"type":"ephemeral"}},{"name":"b"}]}"#,
            r#"{"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}]}"#,
            r#"{"messages":[{"role":"assistant","content":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":[{"type":"text","text":"r","cache_control":{"type":"ephemeral"}}]}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"content","content":[{"type":"text","text":"r","cache_control":{"type":"ephemeral"}}]}}]}]}"#,
            r#"{"system":[{"type":"text","text":"s","cache\u005fcontrol":{"type":"ephemeral"}}]}"#,
        ] {
            let l = lay(body);
            assert!(l.has_marker(), "{body}");
            assert_eq!(
                apply(body.as_bytes(), &l, &all(Ttl::OneHour)),
                body.as_bytes()
            );
        }
    }

    #[test]
    fn escaped_keys_and_roles_read_as_the_upstream_reads_them() {
        let body = r#"{"m\u0065ssages":[{"r\u006fle":"\u0075ser","content":"hi"}]}"#;
        assert!(lay(body).breakpoint(Spot::LastUser).is_some());
        assert!(!decoded_eq(br"\u00e9", b"e"));
        assert!(decoded_eq(br"a\/b\n", b"a/b\n"));
    }

    #[test]
    fn prefix_bytes_follow_prompt_order_not_key_order() {
        let body =
            r#"{"messages":[{"role":"user","content":"hello"}],"system":"ss","tools":[{"n":1}]}"#;
        let l = lay(body);
        let tools = r#"[{"n":1}]"#.len();
        let system = r#""ss""#.len();
        // Up to and including the last tool: the list's `]` is not part of it.
        assert_eq!(l.prefix_bytes(Spot::Tools), Some(tools - 1));
        assert_eq!(l.prefix_bytes(Spot::System), Some(tools + system));
        let to_user = r#"[{"role":"user","content":"hello""#.len();
        assert_eq!(
            l.prefix_bytes(Spot::LastUser),
            Some(tools + system + to_user)
        );
        let messages = r#"[{"role":"user","content":"hello"}]"#.len();
        assert_eq!(
            l.prefix_bytes(Spot::TopLevel),
            Some(tools + system + messages)
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            "",
            " ",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\u{1}\"}",
            "{} {}",
            "{\"a\":1}x",
            "{'a':1}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(layout(body.as_bytes()), Err(LayoutError::Malformed { .. })),
                "{body:?}"
            );
        }
        assert!(matches!(
            layout(b"{\"a\":\"\xff\"}"),
            Err(LayoutError::Malformed { at: 6 })
        ));
        assert_eq!(layout(b"[1,2]"), Err(LayoutError::NotAnObject));
        assert_eq!(layout(b" \"s\" "), Err(LayoutError::NotAnObject));
        assert_eq!(
            layout(br#"{"system":"a","system":"b"}"#),
            Err(LayoutError::Repeated { field: "system" })
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(layout(deep.as_bytes()), Err(LayoutError::TooDeep));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(90), "]".repeat(90));
        assert!(layout(ok.as_bytes()).is_ok());
    }

    #[test]
    fn valid_numbers_and_literals_pass() {
        let body = r#"{"a":[0,-0,1.5,-2e10,3E+2,4e-1,true,false,null,"\ud83d\ude00",{}]}"#;
        assert!(layout(body.as_bytes()).is_ok());
    }

    #[test]
    fn plans_are_bounded_ordered_and_shaped_per_provider() {
        assert_eq!(Plan::new(&[(Spot::Tools, M5); 5]), Err(PlanError::TooMany));
        assert_eq!(
            Plan::new(&[(Spot::Tools, M5), (Spot::Tools, M5)]),
            Err(PlanError::Repeated(Spot::Tools))
        );
        assert_eq!(
            Plan::new(&[(Spot::TopLevel, H1), (Spot::System, M5)]),
            Err(PlanError::TtlOrder)
        );
        let p = Plan::new(&[(Spot::TopLevel, M5), (Spot::Tools, H1), (Spot::System, H1)]).unwrap();
        assert_eq!(p.len(), 3);
        let a = Plan::anthropic(Ttl::OneHour, true, false);
        assert_eq!(
            Spot::ALL.map(|s| a.marker(s)),
            [Some(H1), None, None, Some(H1)]
        );
        let b = Plan::bedrock(Ttl::FiveMinutes, true, true, true);
        assert_eq!(b.marker(Spot::TopLevel), None);
        assert_eq!(b.len(), 3);
        assert!(Plan::default().is_empty());
    }

    #[test]
    fn a_layout_of_another_body_changes_nothing() {
        let l = lay(r#"{"system":"a much longer system prompt"}"#);
        assert_eq!(apply(b"{}", &l, &all(Ttl::FiveMinutes)), b"{}");
    }
}
