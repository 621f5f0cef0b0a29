//! The JSON cursor the walker reads with: whitespace, strings (their insides borrowed, escapes
//! noted), literals and numbers stepped over, objects and arrays handed to the caller key by
//! key or element by element, nesting bounded.

use crate::estimate::text::string_end_escaped;

/// Deepest JSON nesting walked before the body is treated as malformed (bounds recursion).
const MAX_DEPTH: u32 = 128;

#[derive(Debug, Clone, Copy)]
pub(super) struct Bad;
pub(super) type R<T> = Result<T, Bad>;
/// A byte range of the body.
pub(super) type Span = (usize, usize);

#[derive(Debug, Clone, Copy)]
pub(super) struct Cur<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    /// Whether the last string read held an escape.
    pub(super) escaped: bool,
}

impl<'a> Cur<'a> {
    pub(super) fn at(b: &'a [u8], s: Span) -> Cur<'a> {
        Cur {
            b: &b[..s.1],
            i: s.0,
            escaped: false,
        }
    }

    pub(super) fn peek(&mut self) -> Option<u8> {
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
    pub(super) fn value(&mut self, depth: u32) -> R<Span> {
        self.peek();
        let s = self.i;
        self.skip(depth)?;
        Ok((s, self.i))
    }

    pub(super) fn skip(&mut self, depth: u32) -> R<()> {
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
    pub(super) fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
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
    pub(super) fn array(&mut self, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
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

/// The inside of `s` if it is a string value.
pub(super) fn inner(b: &[u8], s: Option<Span>) -> Option<&[u8]> {
    let (a, e) = s?;
    (e >= a + 2 && b[a] == b'"').then(|| &b[a + 1..e - 1])
}
