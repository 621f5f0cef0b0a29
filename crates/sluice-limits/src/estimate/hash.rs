//! A small, fast, stable 64-bit hash for request prefixes.
//!
//! Stable means the same bytes give the same value in every process and release, so replicas
//! sharing prefix sightings through Redis agree. It is not collision-resistant against an
//! adversary: a forged collision only makes one admission predict a cache read that does not
//! happen, and settlement charges the truth afterwards.

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xBF58_476D_1CE4_E5B9;
const K2: u64 = 0x94D0_49BB_1331_11EB;
const K3: u64 = 0xD6E8_FEB8_6659_FD93;

#[inline]
fn mum(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    // Truncation is the point: fold the 128-bit product's halves together.
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (p as u64, (p >> 64) as u64);
    lo ^ hi
}

#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

/// Mix `bytes` into `seed`. Four independent lanes over 32-byte strides keep the multiplier
/// busy, so multi-megabyte base64 images hash at memory speed.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    let mut l = [seed ^ K0, seed ^ K1, seed ^ K2, seed ^ K3];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        l[0] = mum(l[0] ^ word(&c[0..8]), K1);
        l[1] = mum(l[1] ^ word(&c[8..16]), K2);
        l[2] = mum(l[2] ^ word(&c[16..24]), K3);
        l[3] = mum(l[3] ^ word(&c[24..32]), K0);
    }
    let mut h = mum(
        l[0] ^ l[1].rotate_left(17),
        l[2] ^ l[3].rotate_left(41) ^ K2,
    );
    for w in chunks.remainder().chunks(8) {
        h = mum(h ^ word(w), K3);
    }
    mum(h ^ len, K0)
}

/// Combine already-hashed values in order.
pub(crate) fn combine(parts: &[u64]) -> u64 {
    parts.iter().fold(K3, |h, &p| mum(h ^ p, K1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 6_154_681_388_341_274_848;

    #[test]
    fn stable_and_sensitive() {
        // Pinned: a change here breaks prefix sharing between replicas of different releases.
        assert_eq!(hash_bytes(0, b"sluice prefix"), PINNED);
        let a = hash_bytes(
            1,
            b"the quick brown fox jumps over the lazy dog, twice over",
        );
        let b = hash_bytes(
            1,
            b"the quick brown fox jumps over the lazy dog, twice ovex",
        );
        let c = hash_bytes(
            2,
            b"the quick brown fox jumps over the lazy dog, twice over",
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(hash_bytes(0, b"ab"), hash_bytes(0, b"ab\0"));
        assert_ne!(combine(&[1, 2]), combine(&[2, 1]));
    }
}
