//! A canonical form of a JSON document, for the response cache's key: two bodies that differ
//! only in member order or insignificant whitespace have the same canonical form, and any other
//! difference shows in it.
//!
//! The form: no whitespace outside strings; object members sorted by their key's bytes as
//! written; arrays in their order; strings and numbers exactly as written. Strings are **not**
//! escape-normalised (`"\u0061"` and `"a"` stay different) and numbers are not re-formatted
//! (`1.0` is not `1`): a client sending the same request sends the same bytes for them, and a
//! difference only costs a cache miss, never a wrong hit. Nothing is decoded, so the walk is
//! one pass over the bytes with one buffer per object for the sort. An object with a key twice
//! has no canonical form (see [`canonical_json`]).

/// Deeper documents are refused (the request parser's own serde limit is the same).
const MAX_DEPTH: usize = 128;

/// The canonical form of `input`, or `None` when it is not one JSON value (surrounded by
/// whitespace at most), nests deeper than 128 levels, or has an object with the same key twice
/// (as written or once its escapes are decoded): which one counts is the reader's choice, so
/// no form of it is safe to share.
pub fn canonical_json(input: &[u8]) -> Option<Vec<u8>> {
    let mut w = Walker {
        s: input,
        i: 0,
        out: Vec::with_capacity(input.len()),
    };
    w.ws();
    w.value(0)?;
    w.ws();
    (w.i == input.len()).then_some(w.out)
}

struct Walker<'a> {
    s: &'a [u8],
    i: usize,
    out: Vec<u8>,
}

impl Walker<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.i.checked_add(lit.len())?;
        (self.s.get(self.i..end)? == lit).then_some(())?;
        self.out.extend_from_slice(lit);
        self.i = end;
        Some(())
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits1()?;
        }
        self.out.extend_from_slice(self.s.get(start..self.i)?);
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// A string, copied as written (escapes checked for shape, not decoded).
    fn string(&mut self) -> Option<()> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            // Jump to the next quote or backslash; everything between is copied as is.
            let rest = self.s.get(self.i..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..at].iter().any(|&c| c < 0x20) {
                return None;
            }
            self.i += at;
            if self.peek()? == b'"' {
                self.i += 1;
                break;
            }
            self.i += 1;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                b'u' => {
                    let hex = self.s.get(self.i + 1..self.i + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 5;
                }
                _ => return None,
            }
        }
        self.out.extend_from_slice(self.s.get(start..self.i)?);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.out.push(b'[');
        self.ws();
        if self.eat(b']').is_some() {
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Members are written in arrival order, then their spans in `out` are sorted and the
    /// region rewritten: no per-member allocation.
    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.out.push(b'{');
        let region = self.out.len();
        // (member start, key end, member end) in `out`, relative to nothing: absolute offsets.
        let mut members: Vec<(usize, usize, usize)> = Vec::new();
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                let start = self.out.len();
                if self.peek()? != b'"' {
                    return None;
                }
                self.string()?;
                let key_end = self.out.len();
                self.ws();
                self.eat(b':')?;
                self.out.push(b':');
                self.ws();
                self.value(depth)?;
                members.push((start, key_end, self.out.len()));
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if members.len() > 1 {
            let written = self.out.split_off(region);
            let at = |o: usize| o - region;
            let key = |m: &(usize, usize, usize)| &written[at(m.0)..at(m.1)];
            members.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            // Which of two equal keys the upstream keeps is its choice (serde takes the last):
            // no order of them is safe to share a key, so such a body is not cached.
            if members.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
                return None;
            }
            // `"a"` and `"\u0061"` are one key once decoded: compare decoded keys when any
            // is escaped (rare: only then is anything allocated).
            if members.iter().any(|m| key(m).contains(&b'\\')) {
                let mut decoded = Vec::with_capacity(members.len());
                for m in &members {
                    decoded.push(serde_json::from_slice::<String>(key(m)).ok()?);
                }
                decoded.sort_unstable();
                if decoded.windows(2).any(|w| w[0] == w[1]) {
                    return None;
                }
            }
            for (n, m) in members.iter().enumerate() {
                if n > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(&written[at(m.0)..at(m.2)]);
            }
        }
        self.out.push(b'}');
        Some(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn c(s: &str) -> Option<String> {
        canonical_json(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn sorts_members_and_drops_whitespace() {
        assert_eq!(
            c(" { \"b\" : [ 1 , {\"z\":null,\"a\":true} ],\n\"a\":\"x y\" } ").as_deref(),
            Some(r#"{"a":"x y","b":[1,{"a":true,"z":null}]}"#)
        );
        assert_eq!(c("{}").as_deref(), Some("{}"));
        assert_eq!(c("[ ]").as_deref(), Some("[]"));
    }

    #[test]
    fn strings_and_numbers_stay_as_written() {
        // Decided: no escape or number normalisation (a miss, never a wrong hit).
        assert_ne!(c(r#"{"a":"\u0061"}"#), c(r#"{"a":"a"}"#));
        assert_ne!(c(r#"{"a":1.0}"#), c(r#"{"a":1}"#));
        assert_eq!(
            c(r#"["\"}\\",-0.5e+3]"#).as_deref(),
            Some(r#"["\"}\\",-0.5e+3]"#)
        );
    }

    #[test]
    fn a_duplicate_key_anywhere_is_refused() {
        // Whichever one the upstream takes, the two orders are different requests.
        assert_eq!(c(r#"{"temperature":0,"temperature":1}"#), None);
        assert_eq!(c(r#"{"temperature":1,"temperature":0}"#), None);
        assert_eq!(c(r#"{"a":1,"a":1}"#), None);
        assert_eq!(c(r#"{"m":[{"x":{"k":1,"b":2,"k":3}}]}"#), None, "nested");
        // Escaped spellings of one key are the same key.
        assert_eq!(c(r#"{"\u0061":1,"a":2}"#), None);
        assert_eq!(c(r#"{"t\u0065mp":1,"temp":2,"z":0}"#), None);
        // Distinct keys, escaped or not, are fine.
        assert!(c(r#"{"\u0061":1,"b":2}"#).is_some());
        assert!(c(r#"{"a":{"a":1},"b":{"a":1}}"#).is_some());
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "tru",
            "\"\u{1}\"",
            "\"\\x\"",
            "{} {}",
            "{1:2}",
            "\"\\u12G4\"",
        ] {
            assert_eq!(c(bad), None, "{bad:?}");
        }
        let deep = "[".repeat(129) + &"]".repeat(129);
        assert_eq!(c(&deep), None);
        let ok = "[".repeat(128) + &"]".repeat(128);
        assert!(c(&ok).is_some());
    }
}
