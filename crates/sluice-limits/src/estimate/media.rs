//! Images and PDFs inside a request, read from their base64 text without decoding it whole.
//!
//! Base64 maps every 3 bytes to 4 characters, so any byte range of the file can be decoded on
//! its own: an image's width and height come from a few dozen bytes of its header (a JPEG's
//! frame header may sit after large EXIF segments, which are skipped by their lengths), and a
//! PDF's page count from its first and last 64 KiB.

/// The upstream's image resize limits for a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ImageLimits {
    /// Longest edge after resizing, in pixels.
    pub long_edge: f64,
    /// Most tokens one image can cost.
    pub max_tokens: f64,
}

/// Models up to Claude 4.6: "If your image's long edge is more than 1568 pixels, or your image
/// is more than ~1,600 tokens, it will first be scaled down, preserving aspect ratio".
pub(crate) const STANDARD: ImageLimits = ImageLimits {
    long_edge: 1568.0,
    max_tokens: 1600.0,
};

/// Claude Opus 4.7 reads images up to 2576 pixels on the long edge (4784 tokens).
pub(crate) const HIGH_RES: ImageLimits = ImageLimits {
    long_edge: 2576.0,
    max_tokens: 4784.0,
};

/// The upstream's documented image formula: `tokens = width × height / 750`, after scaling
/// down (aspect ratio kept) to fit both limits.
pub(crate) fn image_tokens(width: u32, height: u32, lim: ImageLimits) -> f64 {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let mut s = (lim.long_edge / w.max(h)).min(1.0);
    let t = w * h * s * s / 750.0;
    if t > lim.max_tokens {
        s *= (lim.max_tokens / t).sqrt();
    }
    (w * s * h * s / 750.0).ceil().max(1.0)
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Base64 text viewed as the bytes it encodes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct B64<'a>(pub &'a [u8]);

impl B64<'_> {
    /// Decoded length (padding and a trailing partial group accounted for).
    pub(crate) fn len(&self) -> usize {
        let s = self.0;
        let pad = s.iter().rev().take(2).take_while(|&&c| c == b'=').count();
        let chars = s.len() - pad;
        chars / 4 * 3 + (chars % 4).saturating_sub(1)
    }

    /// Decode bytes `off..off + out.len()` into `out`; returns how many were decoded (fewer at
    /// the end of the data or at the first character that is not base64).
    pub(crate) fn read(&self, off: usize, out: &mut [u8]) -> usize {
        let mut n = 0;
        let mut group = off / 3;
        let mut skip = off % 3;
        while n < out.len() {
            let Some(chars) = self.0.get(group * 4..) else {
                break;
            };
            let mut v = 0u32;
            let mut got = 0;
            for &c in chars.iter().take(4) {
                let Some(x) = b64_value(c) else { break };
                v |= x << (18 - 6 * got);
                got += 1;
            }
            let bytes = match got {
                4 => 3,
                3 => 2,
                2 => 1,
                _ => 0,
            };
            let [_, b0, b1, b2] = v.to_be_bytes();
            for &b in [b0, b1, b2].iter().take(bytes).skip(skip) {
                if n == out.len() {
                    break;
                }
                out[n] = b;
                n += 1;
            }
            if bytes < 3 {
                break;
            }
            skip = 0;
            group += 1;
        }
        n
    }
}

fn be16(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 8) | u32::from(b[1])
}
fn le16(b: &[u8]) -> u32 {
    u32::from(b[0]) | (u32::from(b[1]) << 8)
}
fn le24(b: &[u8]) -> u32 {
    le16(b) | (u32::from(b[2]) << 16)
}
fn be32(b: &[u8]) -> u32 {
    (be16(b) << 16) | be16(&b[2..])
}

/// Width and height of a PNG, JPEG, GIF or WebP from its base64 text, or `None` if the header
/// is not one of those (or is cut short).
pub(crate) fn image_dims(data: B64<'_>) -> Option<(u32, u32)> {
    let mut h = [0u8; 32];
    let n = data.read(0, &mut h);
    let h = &h[..n];
    if h.len() >= 24 && h.starts_with(b"\x89PNG\r\n\x1a\n") && &h[12..16] == b"IHDR" {
        return Some((be32(&h[16..]), be32(&h[20..])));
    }
    if h.len() >= 10 && (h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a")) {
        return Some((le16(&h[6..]), le16(&h[8..])));
    }
    if h.len() >= 30 && h.starts_with(b"RIFF") && &h[8..12] == b"WEBP" {
        return match &h[12..16] {
            b"VP8X" => Some((le24(&h[24..]) + 1, le24(&h[27..]) + 1)),
            b"VP8L" => {
                let bits = le16(&h[21..]) | (le16(&h[23..]) << 16);
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            b"VP8 " => Some((le16(&h[26..]) & 0x3fff, le16(&h[28..]) & 0x3fff)),
            _ => None,
        };
    }
    if h.len() >= 4 && h[0] == 0xff && h[1] == 0xd8 {
        return jpeg_dims(data);
    }
    None
}

fn jpeg_dims(data: B64<'_>) -> Option<(u32, u32)> {
    let mut pos = 2usize;
    // A real file reaches its frame header within a few segments; the bound keeps a hostile
    // chain of tiny segments from costing more than a few microseconds.
    for _ in 0..64 {
        let mut m = [0u8; 9];
        if data.read(pos, &mut m) < 4 || m[0] != 0xff {
            return None;
        }
        match m[1] {
            0xff => pos += 1, // fill byte
            0xd8 | 0x01 | 0xd0..=0xd7 => pos += 2,
            0xc0..=0xcf if !matches!(m[1], 0xc4 | 0xc8 | 0xcc) => {
                if data.read(pos, &mut m) < 9 {
                    return None;
                }
                return Some((be16(&m[7..]), be16(&m[5..])));
            }
            0xd9 | 0xda => return None, // end of image or scan data before any frame header
            _ => pos += 2 + usize::try_from(be16(&m[2..])).ok()?,
        }
    }
    None
}

/// Bytes of a PDF searched at each end for the page tree's `/Count`.
const PDF_WINDOW: usize = 64 * 1024;

/// Pages of a PDF, from the `/Count` of its page tree root when it sits (uncompressed) in the
/// first or last 64 KiB, where writers usually put it. `None` when it cannot be found that
/// cheaply (e.g. a page tree inside a compressed object stream).
pub(crate) fn pdf_pages(data: B64<'_>) -> Option<u64> {
    let len = data.len();
    let mut buf = [0u8; 4096];
    let mut best: Option<u64> = None;
    let windows = [
        (0, PDF_WINDOW.min(len)),
        (len.saturating_sub(PDF_WINDOW).max(PDF_WINDOW.min(len)), len),
    ];
    for (start, end) in windows {
        let mut off = start;
        while off < end {
            // Overlapping reads so a `/Type /Pages ... /Count` split across two reads is seen.
            let want = (end - off).min(buf.len());
            let n = data.read(off, &mut buf[..want]);
            if n == 0 {
                break;
            }
            scan_pages(&buf[..n], &mut best);
            if off + n >= end || n < want {
                break;
            }
            off += n.saturating_sub(512).max(1);
        }
    }
    best
}

fn scan_pages(b: &[u8], best: &mut Option<u64>) {
    for at in memchr::memmem::find_iter(b, b"/Pages") {
        // The tree root's dictionary: `/Type /Pages` with a `/Count n` nearby.
        let lo = at.saturating_sub(200);
        let hi = (at + 200).min(b.len());
        let Some(c) = memchr::memmem::find(&b[lo..hi], b"/Count") else {
            continue;
        };
        let digits = b[lo + c + 6..hi]
            .iter()
            .skip_while(|x| x.is_ascii_whitespace())
            .take_while(|x| x.is_ascii_digit())
            .take(6)
            .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
        if digits > 0 && best.is_none_or(|b| digits > b) {
            *best = Some(digits);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn b64(bytes: &[u8]) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for c in bytes.chunks(3) {
            let v = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[((v >> (18 - 6 * i)) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out
    }

    #[test]
    fn windows_decode_anywhere() {
        let raw: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let enc = b64(&raw);
        let v = B64(&enc);
        assert_eq!(v.len(), 1000);
        for off in [0, 1, 2, 3, 500, 997, 999] {
            let mut out = [0u8; 7];
            let n = v.read(off, &mut out);
            assert_eq!(&out[..n], &raw[off..(off + 7).min(1000)]);
        }
        assert_eq!(v.read(1000, &mut [0u8; 4]), 0);
    }

    #[test]
    fn headers() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&1920u32.to_be_bytes());
        png.extend_from_slice(&1080u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        assert_eq!(image_dims(B64(&b64(&png))), Some((1920, 1080)));

        let gif = b"GIF89a\x40\x01\xf0\x00\0\0\0";
        assert_eq!(image_dims(B64(&b64(gif))), Some((320, 240)));

        // JPEG with an APP1 segment before the frame header.
        let mut jpg = vec![0xff, 0xd8, 0xff, 0xe1, 0x00, 0x10];
        jpg.extend_from_slice(&[0u8; 14]);
        jpg.extend_from_slice(&[0xff, 0xc2, 0, 17, 8, 0x02, 0x58, 0x03, 0x20, 3]);
        assert_eq!(image_dims(B64(&b64(&jpg))), Some((800, 600)));

        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        webp.extend_from_slice(&[0x1f, 0x03, 0x00, 0x57, 0x02, 0x00]);
        assert_eq!(image_dims(B64(&b64(&webp))), Some((800, 600)));

        assert_eq!(image_dims(B64(b"not base64 at all")), None);
        assert_eq!(image_dims(B64(b"")), None);
    }

    #[test]
    fn documented_image_examples() {
        // The upstream's table: 200×200 ≈ 54, 1000×1000 ≈ 1334, 1092×1092 ≈ 1590.
        assert_eq!(image_tokens(200, 200, STANDARD), 54.0);
        assert_eq!(image_tokens(1000, 1000, STANDARD), 1334.0);
        assert_eq!(image_tokens(1092, 1092, STANDARD), 1590.0);
        // Big images are scaled down to the cap.
        assert!(image_tokens(4000, 3000, STANDARD) <= 1600.0);
        assert!(image_tokens(4000, 3000, HIGH_RES) <= 4784.0);
        assert!(image_tokens(4000, 3000, HIGH_RES) > 4000.0);
        // Long and thin: the edge limit binds first.
        assert_eq!(
            image_tokens(3136, 100, STANDARD),
            image_tokens(1568, 50, STANDARD)
        );
    }

    #[test]
    fn pdf_count() {
        let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >> endobj\n";
        assert_eq!(pdf_pages(B64(&b64(pdf))), Some(3));
        assert_eq!(pdf_pages(B64(&b64(b"%PDF-1.7 nothing here"))), None);
    }
}
