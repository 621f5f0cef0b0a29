//! The prefixes prompt caching works with: per section of the prompt, a running hash and token
//! count, the last block boundaries, and the blocks that carry `cache_control`.

use super::{BREAKPOINTS, LOOKBACK};
use crate::estimate::hash::combine;

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mark {
    pub(super) hash: u64,
    pub(super) tok: f64,
    /// Extra tokens if the model reads images at high resolution.
    pub(super) hi: f64,
}

/// The last [`LOOKBACK`] boundaries of a section.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ring {
    m: [Mark; LOOKBACK],
    n: usize,
}

impl Ring {
    fn push(&mut self, m: Mark) {
        self.m[self.n % LOOKBACK] = m;
        self.n += 1;
    }

    pub(super) fn newest_first(&self) -> impl Iterator<Item = Mark> + '_ {
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
pub(super) struct Section {
    pub(super) cur: Mark,
    pub(super) track: Option<Box<Track>>,
}

/// A section's block boundaries and breakpoints (see [`Section`]).
#[derive(Debug, Default)]
pub(super) struct Track {
    pub(super) ring: Ring,
    bps: [Mark; BREAKPOINTS],
    pub(super) n_bps: usize,
    pub(super) ring_at_last_bp: Ring,
}

impl Section {
    pub(super) fn new(track: bool) -> Section {
        Section {
            cur: Mark::default(),
            track: track.then(Box::default),
        }
    }

    pub(super) fn add(&mut self, tok: f64, hi: f64) {
        self.cur.tok += tok;
        self.cur.hi += hi;
    }

    pub(super) fn block_end(&mut self, block_hash: u64, tok: f64, hi: f64, cache: bool) {
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
    pub(super) fn breakpoints(&self) -> impl Iterator<Item = Mark> + '_ {
        let n = self.n_bps.min(BREAKPOINTS);
        (0..n).map(move |k| self.bps[(self.n_bps - n + k) % BREAKPOINTS])
    }
}
