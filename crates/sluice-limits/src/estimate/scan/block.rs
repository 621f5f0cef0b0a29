//! The tokens of one content block: its fields found in place (keys in any order), then text
//! by character class, images by the upstream's size formula, documents by pages, tool calls
//! and results with their framing.

use super::cursor::{Cur, R, Span, inner};
use super::{
    BLOCK, PDF_BYTES_PER_PAGE, PDF_PAGE, THINKING, TOOL_RESULT, TOOL_USE, UNSEEN_DOC_PAGES,
};
use crate::estimate::hash::hash_bytes;
use crate::estimate::media::{self, B64, ImageLimits};
use crate::estimate::text::Classifier;

/// Tokens of one block: the base estimate and the extra for high-resolution image models.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cost {
    pub(super) tok: f64,
    pub(super) hi: f64,
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
pub(super) struct Fields {
    pub(super) ty: Option<Span>,
    text: Option<Span>,
    content: Option<Span>,
    input: Option<Span>,
    pub(super) name: Option<Span>,
    id: Option<Span>,
    thinking: Option<Span>,
    data: Option<Span>,
    title: Option<Span>,
    context: Option<Span>,
    pub(super) description: Option<Span>,
    pub(super) input_schema: Option<Span>,
    /// The `source` object, read in place (its `data` may be megabytes of base64).
    source: Source,
    /// `source` when it is a string (a search result's).
    source_str: Option<Span>,
    pub(super) cache: bool,
}

/// An image's or document's `source`.
#[derive(Debug, Default)]
pub(super) struct Source {
    ty: Option<Span>,
    data: Option<Span>,
    /// `data` holds escapes (so it is not plain base64 to decode in place).
    data_escaped: bool,
    content: Option<Span>,
}

pub(super) fn text_tokens(raw: &[u8]) -> f64 {
    let mut c = Classifier::default();
    c.json_str(raw);
    c.finish().tokens()
}

pub(super) fn json_tokens(raw: &[u8]) -> f64 {
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
pub(super) struct Body<'a> {
    pub(super) b: &'a [u8],
}

impl<'a> Body<'a> {
    fn s(&self, span: Option<Span>) -> Option<&'a [u8]> {
        inner(self.b, span)
    }

    /// Read a block object's fields; with `hash`, also its content hash (every key and value
    /// except `cache_control`, so moving a breakpoint does not change a prefix's hash).
    pub(super) fn fields(c: &mut Cur<'_>, hash: bool) -> R<(Fields, u64)> {
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
    pub(super) fn block_cost(&self, f: &Fields, depth: u32) -> R<Cost> {
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
