//! Text to tokens by character class, without a tokenizer.
//!
//! A byte-pair tokenizer spends about one token on a common English word with its leading
//! space, more on long or rare words, about one per CJK character, and several per emoji; runs
//! of digits, punctuation and indentation each have their own rates. Counting those classes in
//! one pass and weighting them (weights fitted against the public Claude tokenizer on texts
//! that are not in the test corpus, see `docs/rate-limiting.md`) lands far closer than
//! `bytes / 4`, which is off by 3× on Chinese and by half on code.

/// Per-class counts of a text. [`TextProfile::tokens`] weighs them into a token estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextProfile {
    /// Runs of letters (ASCII or other alphabetic scripts); a lower-to-upper case change
    /// (`camelCase`) starts a new one, as tokenizers split there.
    pub words: u64,
    /// ASCII letters.
    pub letters: u64,
    /// ASCII letters past the sixth of their word (long words split into more pieces).
    pub long_letters: u64,
    /// Runs of ASCII digits.
    pub digit_runs: u64,
    /// ASCII digits.
    pub digits: u64,
    /// ASCII punctuation and symbols.
    pub punct: u64,
    /// Runs of ASCII punctuation.
    pub punct_runs: u64,
    /// Whitespace runs other than a single space (indentation, line breaks).
    pub ws_runs: u64,
    /// Line breaks.
    pub newlines: u64,
    /// Latin-1 and Latin Extended letters (accents: `é`, `ü`, `ł`).
    pub latin_ext: u64,
    /// Cyrillic letters.
    pub cyrillic: u64,
    /// Other two-byte scripts (Greek, Armenian, Hebrew, Arabic, Syriac, Thaana, N'Ko).
    pub other_alpha2: u64,
    /// Han, kana, CJK punctuation and full-width forms.
    pub cjk: u64,
    /// Hangul syllables.
    pub hangul: u64,
    /// Other characters of the Basic Multilingual Plane above U+07FF (Indic, Thai, typographic
    /// punctuation, symbols).
    pub other3: u64,
    /// Characters outside the BMP (emoji, rare Han).
    pub astral: u64,
    /// Common English function words (`the`, `of`, `and`, …). Their share tells English
    /// prose, whose words are mostly one token each, from other Latin-script languages, whose
    /// words a mostly-English vocabulary splits into several pieces.
    pub english: u64,
}

/// Function words whose share of a text's words marks it as English (about 30 % in English
/// prose, under 5 % in other languages).
const ENGLISH: [&[u8]; 28] = [
    b"the", b"of", b"and", b"to", b"a", b"in", b"is", b"that", b"for", b"it", b"with", b"as",
    b"on", b"be", b"this", b"are", b"by", b"or", b"not", b"you", b"your", b"if", b"from", b"at",
    b"an", b"can", b"will", b"have",
];

/// A word of up to six lowercase letters packed 5 bits a letter (0 if it does not fit).
const fn word_key(w: &[u8]) -> u32 {
    let mut k = 0u32;
    let mut i = 0;
    while i < w.len() {
        k = (k << 5) | (w[i] - b'a' + 1) as u32;
        i += 1;
    }
    k
}

const ENGLISH_KEYS: [u32; 28] = {
    let mut keys = [0u32; 28];
    let mut i = 0;
    while i < ENGLISH.len() {
        keys[i] = word_key(ENGLISH[i]);
        i += 1;
    }
    // Insertion sort, so lookups can binary search.
    let mut a = 1;
    while a < keys.len() {
        let mut b = a;
        while b > 0 && keys[b - 1] > keys[b] {
            let t = keys[b];
            keys[b] = keys[b - 1];
            keys[b - 1] = t;
            b -= 1;
        }
        a += 1;
    }
    keys
};

/// Weights, in the order of [`TextProfile::features`]. Fitted by least squares (non-negative)
/// against `@anthropic-ai/tokenizer` on the calibration texts; see `tests/corpus/README.md`.
const WEIGHTS: [f64; 17] = [
    0.953, // words
    0.023, // letters
    0.048, // long_letters
    1.419, // digit_runs
    0.000, // digits
    0.074, // punct
    0.768, // punct_runs
    1.151, // ws_runs
    0.316, // newlines
    2.165, // latin_ext
    0.486, // cyrillic
    1.069, // other_alpha2
    1.046, // cjk
    1.414, // hangul
    1.269, // other3
    2.784, // astral
    0.086, // letters of non-English text
];

impl TextProfile {
    /// Count the classes of plain text.
    pub fn of(text: &str) -> TextProfile {
        let mut c = Classifier::default();
        c.plain(text.as_bytes());
        c.finish()
    }

    /// The model's inputs, in the order of the weights: the counts, and last the ASCII
    /// letters of text that does not read as English (scaled down as the share of English
    /// function words rises to 15 %).
    pub fn features(&self) -> [f64; 17] {
        let share = self.english as f64 / self.words.max(1) as f64;
        let foreign = (1.0 - share / 0.15).max(0.0);
        // Counts stay far below 2^52, so the conversions are exact.
        [
            self.words as f64,
            self.letters as f64,
            self.long_letters as f64,
            self.digit_runs as f64,
            self.digits as f64,
            self.punct as f64,
            self.punct_runs as f64,
            self.ws_runs as f64,
            self.newlines as f64,
            self.latin_ext as f64,
            self.cyrillic as f64,
            self.other_alpha2 as f64,
            self.cjk as f64,
            self.hangul as f64,
            self.other3 as f64,
            self.astral as f64,
            self.letters as f64 * foreign,
        ]
    }

    /// The estimated number of tokens (fractional; callers round once per request).
    pub fn tokens(&self) -> f64 {
        self.features()
            .iter()
            .zip(WEIGHTS)
            .map(|(n, w)| n * w)
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Cls {
    #[default]
    Start,
    Lower,
    Upper,
    Alpha2,
    Digit,
    Punct,
    Space,
    Other,
}

/// Streaming counter: feed bytes (or decoded code points), then [`Classifier::finish`].
#[derive(Debug, Default)]
pub(crate) struct Classifier {
    p: TextProfile,
    prev: Cls,
    word_len: u32,
    /// The current word packed by [`word_key`] while it is short lowercase-able ASCII.
    word_key: u32,
    word_ascii: bool,
    ws_len: u32,
    ws_nl: bool,
}

impl Classifier {
    #[inline]
    fn end_ws(&mut self) {
        if self.prev == Cls::Space {
            if self.ws_len > 1 || self.ws_nl {
                self.p.ws_runs += 1;
            }
            self.ws_len = 0;
            self.ws_nl = false;
        }
    }

    #[inline]
    fn end_word(&mut self) {
        if self.word_len > 0 {
            if self.word_ascii
                && self.word_len <= 4
                && ENGLISH_KEYS.binary_search(&self.word_key).is_ok()
            {
                self.p.english += 1;
            }
            self.word_len = 0;
        }
    }

    /// A letter; `ascii` is its lowercase ASCII form, or 0 for other scripts.
    #[inline]
    fn letter(&mut self, cls: Cls, ascii: u8) {
        let cont = matches!(self.prev, Cls::Lower | Cls::Upper | Cls::Alpha2)
            && !(cls == Cls::Upper && self.prev == Cls::Lower);
        if cont {
            self.word_len += 1;
        } else {
            self.end_word();
            self.end_ws();
            self.p.words += 1;
            self.word_len = 1;
            self.word_key = 0;
            self.word_ascii = true;
        }
        if ascii == 0 {
            self.word_ascii = false;
        } else if self.word_len <= 6 {
            self.word_key = (self.word_key << 5) | u32::from(ascii - b'a' + 1);
        }
        self.prev = cls;
    }

    #[inline(always)]
    pub(crate) fn ascii(&mut self, b: u8) {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => {
                let cls = if b.is_ascii_lowercase() {
                    Cls::Lower
                } else {
                    Cls::Upper
                };
                self.letter(cls, b.to_ascii_lowercase());
                self.p.letters += 1;
                if self.word_len > 6 {
                    self.p.long_letters += 1;
                }
            }
            b'0'..=b'9' => {
                self.end_word();
                if self.prev != Cls::Digit {
                    self.end_ws();
                    self.p.digit_runs += 1;
                }
                self.p.digits += 1;
                self.prev = Cls::Digit;
            }
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                self.end_word();
                if self.prev != Cls::Space {
                    self.ws_len = 0;
                    self.ws_nl = false;
                }
                self.ws_len += 1;
                if b == b'\n' {
                    self.ws_nl = true;
                    self.p.newlines += 1;
                }
                self.prev = Cls::Space;
            }
            0x00..=0x1f | 0x7f => {
                // Control characters: rare, and each is its own byte token.
                self.end_word();
                self.end_ws();
                self.p.other3 += 1;
                self.prev = Cls::Other;
            }
            _ => {
                self.end_word();
                if self.prev != Cls::Punct {
                    self.end_ws();
                    self.p.punct_runs += 1;
                }
                self.p.punct += 1;
                self.prev = Cls::Punct;
            }
        }
    }

    /// A decoded non-ASCII code point.
    #[inline]
    pub(crate) fn code_point(&mut self, c: u32) {
        match c {
            0..=0x7f => {
                // Only reached from `\u00XX` escapes; the cast is exact in this arm.
                #[allow(clippy::cast_possible_truncation)]
                self.ascii(c as u8);
            }
            0xa0 | 0x2000..=0x200a => self.ascii(b' '),
            0xc0..=0x24f if c != 0xd7 && c != 0xf7 => {
                self.letter(Cls::Alpha2, 0);
                self.p.latin_ext += 1;
            }
            0x400..=0x52f => {
                self.letter(Cls::Alpha2, 0);
                self.p.cyrillic += 1;
            }
            0x370..=0x3ff | 0x530..=0x7ff => {
                self.letter(Cls::Alpha2, 0);
                self.p.other_alpha2 += 1;
            }
            0x80..=0x7ff => {
                self.end_word();
                self.end_ws();
                self.p.latin_ext += 1;
                self.prev = Cls::Other;
            }
            0xac00..=0xd7af => {
                self.end_word();
                self.end_ws();
                self.p.hangul += 1;
                self.prev = Cls::Other;
            }
            0x3000..=0x30ff
            | 0x3400..=0x4dbf
            | 0x4e00..=0x9fff
            | 0xf900..=0xfaff
            | 0xff00..=0xffef => {
                self.end_word();
                self.end_ws();
                self.p.cjk += 1;
                self.prev = Cls::Other;
            }
            0x800..=0xffff => {
                self.end_word();
                self.end_ws();
                self.p.other3 += 1;
                self.prev = Cls::Other;
            }
            _ => {
                self.end_word();
                self.end_ws();
                self.p.astral += 1;
                self.prev = Cls::Other;
            }
        }
    }

    /// Decode one UTF-8 sequence starting at `b[0]` (non-ASCII); returns bytes consumed.
    /// Invalid sequences count one byte as an unknown character and move on.
    #[inline]
    fn utf8(&mut self, b: &[u8]) -> usize {
        let lead = u32::from(b[0]);
        let (n, init) = match b[0] {
            0xc2..=0xdf => (2, lead & 0x1f),
            0xe0..=0xef => (3, lead & 0x0f),
            0xf0..=0xf4 => (4, lead & 0x07),
            _ => {
                self.code_point(0xfffd);
                return 1;
            }
        };
        if b.len() < n {
            self.code_point(0xfffd);
            return 1;
        }
        let mut c = init;
        for &x in &b[1..n] {
            if x & 0xc0 != 0x80 {
                self.code_point(0xfffd);
                return 1;
            }
            c = (c << 6) | u32::from(x & 0x3f);
        }
        self.code_point(c);
        n
    }

    /// The rest of a word: `run` lowercase ASCII letters continuing the current one. The
    /// common case (most bytes of most text), so it is counted in bulk.
    #[inline]
    fn word_rest(&mut self, run: &[u8]) {
        let before = self.word_len as usize;
        let after = before + run.len();
        for &c in run.iter().take(6usize.saturating_sub(before)) {
            self.word_key = (self.word_key << 5) | u32::from(c - b'a' + 1);
        }
        self.p.letters += run.len() as u64;
        self.p.long_letters += after.saturating_sub(before.max(6)) as u64;
        self.word_len = u32::try_from(after).unwrap_or(u32::MAX);
        self.prev = Cls::Lower;
    }

    /// Length of the run of lowercase ASCII letters at the start of `b`, when it continues a
    /// word (0 otherwise).
    #[inline]
    fn continues_word(&self, b: &[u8]) -> usize {
        if matches!(self.prev, Cls::Lower | Cls::Upper | Cls::Alpha2) {
            b.iter().take_while(|c| c.is_ascii_lowercase()).count()
        } else {
            0
        }
    }

    /// Plain UTF-8 text.
    pub(crate) fn plain(&mut self, b: &[u8]) {
        let mut i = 0;
        while i < b.len() {
            let x = b[i];
            let run = self.continues_word(&b[i..]);
            if run > 0 {
                self.word_rest(&b[i..i + run]);
                i += run;
            } else if x < 0x80 {
                self.ascii(x);
                i += 1;
            } else {
                i += self.utf8(&b[i..]);
            }
        }
    }

    /// The raw inside of a JSON string (between its quotes), escapes decoded on the fly.
    pub(crate) fn json_str(&mut self, b: &[u8]) {
        let mut i = 0;
        while i < b.len() {
            let x = b[i];
            let run = self.continues_word(&b[i..]);
            if run > 0 {
                self.word_rest(&b[i..i + run]);
                i += run;
            } else if x == b'\\' {
                i += self.escape(&b[i..]);
            } else if x < 0x80 {
                self.ascii(x);
                i += 1;
            } else {
                i += self.utf8(&b[i..]);
            }
        }
    }

    /// One escape at `b[0] == b'\\'`; returns bytes consumed.
    fn escape(&mut self, b: &[u8]) -> usize {
        let Some(&e) = b.get(1) else {
            self.ascii(b'\\');
            return 1;
        };
        match e {
            b'n' => self.ascii(b'\n'),
            b't' => self.ascii(b'\t'),
            b'r' => self.ascii(b'\r'),
            b'b' | b'f' => self.ascii(0x0c),
            b'u' => {
                let Some(hi) = hex4(b.get(2..6)) else {
                    self.ascii(b'\\');
                    return 1;
                };
                if (0xd800..0xdc00).contains(&hi)
                    && b.get(6) == Some(&b'\\')
                    && b.get(7) == Some(&b'u')
                    && let Some(lo) = hex4(b.get(8..12))
                    && (0xdc00..0xe000).contains(&lo)
                {
                    self.code_point(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
                    return 12;
                }
                self.code_point(hi);
                return 6;
            }
            other => self.ascii(other),
        }
        2
    }

    /// Raw JSON text (a tool schema, a tool call's input): whitespace between JSON tokens is
    /// layout, not content, so it is skipped; strings are decoded.
    pub(crate) fn json_value(&mut self, b: &[u8]) {
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b' ' | b'\t' | b'\n' | b'\r' => i += 1,
                b'"' => {
                    self.ascii(b'"');
                    let end = string_end(b, i + 1);
                    self.json_str(&b[i + 1..end]);
                    if end < b.len() {
                        self.ascii(b'"');
                    }
                    i = end + 1;
                }
                x if x < 0x80 => {
                    self.ascii(x);
                    i += 1;
                }
                _ => i += self.utf8(&b[i..]),
            }
        }
    }

    /// The counts so far (closing an open whitespace run).
    pub(crate) fn finish(mut self) -> TextProfile {
        self.end_word();
        self.end_ws();
        self.p
    }
}

/// Index of the closing quote of a JSON string whose inside starts at `from` (or `b.len()`).
pub(crate) fn string_end(b: &[u8], from: usize) -> usize {
    string_end_escaped(b, from).0
}

/// [`string_end`], and whether the string holds any escape.
pub(crate) fn string_end_escaped(b: &[u8], from: usize) -> (usize, bool) {
    let mut i = from;
    let mut escaped = false;
    // Most strings of a request body are short (keys, roles, types, ids): a plain loop finds
    // their end before a vectorised search would have set up.
    let near = from.saturating_add(SHORT).min(b.len());
    while i < near {
        match b[i] {
            b'"' => return (i, escaped),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    while let Some(off) = b.get(i..).and_then(|s| memchr::memchr2(b'"', b'\\', s)) {
        let at = i + off;
        if b[at] == b'"' {
            return (at, escaped);
        }
        escaped = true;
        i = at + 2;
    }
    (b.len(), escaped)
}

/// Bytes of a string looked at one by one before [`string_end_escaped`] searches the rest.
const SHORT: usize = 16;

fn hex4(b: Option<&[u8]>) -> Option<u32> {
    let b = b?;
    let mut v = 0u32;
    for &x in b {
        v = (v << 4) | char::from(x).to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    proptest::proptest! {
        /// The short-string loop finds the same end as a search of the whole tail.
        #[test]
        fn string_end_matches_a_plain_search(
            body in proptest::collection::vec(proptest::sample::select(vec![b'a', b'"', b'\\']), 0..80),
            from in 0usize..90,
        ) {
            let mut i = from;
            let mut escaped = false;
            let want = loop {
                match body.get(i) {
                    None => break (body.len(), escaped),
                    Some(b'"') => break (i, escaped),
                    Some(b'\\') => {
                        escaped = true;
                        i += 2;
                    }
                    Some(_) => i += 1,
                }
            };
            proptest::prop_assert_eq!(string_end_escaped(&body, from), want);
        }
    }

    fn json(s: &str) -> TextProfile {
        let mut c = Classifier::default();
        c.json_str(s.as_bytes());
        c.finish()
    }

    #[test]
    fn classes() {
        let p = TextProfile::of("Hello world, parseJsonValue 2024!\n    x");
        assert_eq!(p.words, 6); // Hello world parse Json Value x
        assert_eq!(p.digit_runs, 1);
        assert_eq!(p.digits, 4);
        assert_eq!(p.punct, 2);
        assert_eq!(p.newlines, 1);
        assert_eq!(p.ws_runs, 1);
        let p = TextProfile::of("東京は晴れ。Привет, мир! 😀 für");
        assert_eq!(p.cjk, 6);
        assert_eq!(p.cyrillic, 9);
        assert_eq!(p.astral, 1);
        assert_eq!(p.latin_ext, 1);
        assert_eq!(p.words, 3);
        let p = TextProfile::of("The cat of the house, and THE dog; theory is not a word of it.");
        assert_eq!(p.english, 10);
    }

    #[test]
    fn escapes_decode_like_raw_text() {
        let raw = TextProfile::of("Grüße\n\"東京\" 😀\tok");
        let esc = json(r#"Gr\u00fc\u00dfe\n\"\u6771\u4eac\" \ud83d\ude00\tok"#);
        assert_eq!(raw, esc);
        // Malformed escapes never panic and still count something.
        assert!(json(r"\u12").punct > 0);
        assert!(json("\\").punct > 0);
        assert!(json(r"\ud800x").other3 > 0);
    }

    #[test]
    fn json_value_skips_layout() {
        let mut a = Classifier::default();
        a.json_value(br#"{"type": "object",   "properties": {"q": {"type": "string"}}}"#);
        let mut b = Classifier::default();
        b.json_value(
            b"{\n  \"type\":\"object\",\n  \"properties\":{\"q\":{\"type\":\"string\"}}\n}",
        );
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn invalid_utf8_is_counted_not_fatal() {
        let mut c = Classifier::default();
        c.plain(&[0xff, 0xe6, 0x9d, b'a', 0xf0, 0x9f]);
        let p = c.finish();
        assert!(p.other3 >= 3);
    }
}
