//! The cache's bookkeeping, apart from its storage (as llama.cpp keeps
//! `llama-kv-cells.h` beside `llama-kv-cache.h`): which token ids the cache
//! holds, where each absolute position lives, what evicts what, and what a
//! query at a position sees. Every backend plans with it: the CPU cache
//! ([`KvCache`](super::KvCache)) pairs it with its buffers, the GPU keeps its
//! keys and values in its own buffers and plans with a bare `KvPolicy`.
//!
//! * Attention sinks: tokens `0..sinks` live in slots `0..sinks` forever.
//! * A ring for the rest: absolute position `p >= sinks` lives in slot
//!   `sinks + (p - sinks) % (window - sinks)`, so evicting the oldest token is
//!   just overwriting its slot; nothing is ever shifted or copied.
//! * Keys are stored rotated at their absolute position; once tokens have been
//!   evicted the sinks sit closer to the query in the cache than in the
//!   sequence, so the query is rotated a second time at its in-cache position
//!   ([`KvPolicy::sink_query_position`]) for its dot products with the sinks
//!   ([`PositionPlan::sink_until`]).
//! * Sliding-window layers ([`AttentionWindow::Sliding`]) keep a ring of
//!   exactly their window `n` and no sinks: position `p` lives in slot
//!   `p % n`, and the query sees the last `n` positions (llama.cpp's
//!   `LLAMA_SWA_TYPE_STANDARD` mask), whatever the configured window.

use super::{AttentionWindow, KvCacheConfig, KvStats};
use crate::error::{Error, Result};

/// Where the token at one absolute position goes and what its query sees:
/// the one rule every backend (CPU, GPU, batches) follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionPlan {
    /// The slot its key and value are written to (evicting what was there).
    pub slot: usize,
    /// Slots in use once it is written: the keys its query attends over.
    pub used: usize,
    /// Slots below this hold sinks that the query meets at its in-cache
    /// position (the second rotation); 0 while nothing has been evicted.
    pub sink_until: usize,
    /// The absolute position whose key and value leave the window as this
    /// token takes its slot (a global layer's ring; the cold tier keeps them).
    pub evicts: Option<usize>,
}

impl PositionPlan {
    /// The query needs its second rotation (at the in-cache position).
    pub fn rotates_sink_query(&self) -> bool {
        self.sink_until > 0
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct KvPolicy {
    cfg: KvCacheConfig,
    /// Every token id fed so far, in order (absolute positions `0..len`).
    tokens: Vec<u32>,
    /// The smallest sliding window among the layers (their rings forget first).
    sliding: Option<usize>,
}

impl KvPolicy {
    /// A policy for layers that all attend over the whole window.
    pub fn new(cfg: KvCacheConfig) -> Result<Self> {
        Self::for_layers(cfg, &[])
    }

    /// A policy for layers attending over `windows`.
    pub fn for_layers(cfg: KvCacheConfig, windows: &[AttentionWindow]) -> Result<Self> {
        cfg.validate()?;
        let sliding = windows.iter().filter_map(|w| if let AttentionWindow::Sliding(n) = w { Some(*n) } else { None }).min();
        if sliding == Some(0) {
            return Err(Error::InvalidOption("a sliding attention window of 0 tokens".into()));
        }
        Ok(Self { cfg, tokens: Vec::new(), sliding })
    }

    pub fn config(&self) -> KvCacheConfig {
        self.cfg
    }
    pub fn capacity(&self) -> usize {
        self.cfg.window
    }
    pub fn sinks(&self) -> usize {
        self.cfg.sinks
    }
    /// Size of the ring (the evictable part).
    fn ring(&self) -> usize {
        self.cfg.window - self.cfg.sinks
    }
    /// Tokens seen so far (the absolute position of the next token).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn used(&self) -> usize {
        self.len().min(self.capacity())
    }
    pub fn evicted(&self) -> usize {
        self.len().saturating_sub(self.capacity())
    }
    /// The token ids seen so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// Whether some layer no longer holds every key of the history (the
    /// window evicted, or a sliding ring wrapped): a request diverging from
    /// the history cannot keep a prefix then.
    fn forgot(&self) -> bool {
        self.evicted() > 0 || self.sliding.is_some_and(|n| self.len() > n)
    }
    /// Occupancy, with `bytes` of storage (the owner's K/V buffers, all global).
    pub fn stats(&self, bytes: usize) -> KvStats {
        let (sinks, local_window) = (self.sinks().min(self.len()), self.sliding.unwrap_or(0));
        KvStats { capacity: self.capacity(), used: self.used(), sinks, evicted: self.evicted(), bytes, global_bytes: bytes, local_bytes: 0, local_window, cold: None }
    }

    /// The slot that absolute position `p` occupies.
    pub fn slot(&self, p: usize) -> usize {
        let s = self.cfg.sinks;
        if p < s {
            p
        } else {
            s + (p - s) % self.ring()
        }
    }

    /// The plan for the token at absolute position `p` (tokens are fed in order).
    pub fn plan(&self, p: usize) -> PositionPlan {
        let cap = self.capacity();
        let evicting = p >= cap;
        PositionPlan { slot: self.slot(p), used: (p + 1).min(cap), sink_until: if evicting { self.cfg.sinks } else { 0 }, evicts: evicting.then(|| p - self.ring()) }
    }

    /// The plan for position `p` in a layer attending over `window`.
    pub fn plan_in(&self, window: AttentionWindow, p: usize) -> PositionPlan {
        match window {
            AttentionWindow::Global => self.plan(p),
            AttentionWindow::Sliding(n) => PositionPlan { slot: p % n, used: (p + 1).min(n), sink_until: 0, evicts: None },
        }
    }

    /// In-cache position of a query once evictions happened: the last slot's,
    /// past the recall rows of a cold tier (which sit between the sinks and
    /// the ring: see ARCHITECTURE.md).
    pub fn sink_query_position(&self) -> usize {
        self.capacity() - 1 + self.recall_rows()
    }

    /// Rows of recalled keys a global layer attends over at most (0 without a cold tier).
    pub fn recall_rows(&self) -> usize {
        self.cfg.cold.map_or(0, |c| c.recall_rows())
    }

    /// How many of `want` tokens the next chunk may hold: a chunk either fits
    /// without evicting, or starts on a full cache and evicts at most the ring.
    pub fn next_chunk(&self, want: usize) -> usize {
        let n = self.len();
        let cap = self.capacity();
        let limit = if n < cap { cap - n } else { self.ring() };
        want.min(limit).max(1)
    }

    /// Keeps the longest common prefix of the cached tokens and `ids`, leaving at
    /// least one token of `ids` to be fed (its logits are needed). Returns how
    /// many tokens of `ids` are already in the cache. Once tokens have been
    /// evicted, a request that diverges from the history starts from scratch:
    /// the evicted keys cannot be restored.
    pub fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let common = self.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let keep = common.min(ids.len().saturating_sub(1));
        if keep < self.len() {
            if self.forgot() {
                self.tokens.clear();
                return 0;
            }
            self.tokens.truncate(keep);
        }
        keep
    }

    /// Records that a chunk's tokens are now in every layer.
    pub fn commit(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
    }

    /// Keeps only the first `n` tokens (the storage of later slots is simply
    /// overwritten later). Only before anything was evicted, or to forget all.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Forgets everything (the storage stays allocated).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Makes this policy a copy of `other`'s (a shared prefix): same
    /// configuration and nothing evicted yet.
    pub fn copy_from(&mut self, other: &KvPolicy) -> Result<()> {
        if other.cfg != self.cfg || other.sliding != self.sliding {
            return Err(Error::Backend("copy between caches of different shapes".into()));
        }
        if other.evicted() > 0 {
            return Err(Error::Backend("cannot copy a cache that has evicted tokens".into()));
        }
        self.tokens.clear();
        self.tokens.extend_from_slice(&other.tokens);
        Ok(())
    }
}
