//! The bounded sliding-window KV cache: the heart of kvchat.
//!
//! * Preallocated: one K and one V buffer per layer, `[n_kv_head, capacity, head_dim]`,
//!   allocated once; memory never grows afterwards.
//! * Attention sinks: tokens `0..sinks` live in slots `0..sinks` forever.
//! * A ring for the rest: absolute position `p >= sinks` lives in slot
//!   `sinks + (p - sinks) % (capacity - sinks)`, so evicting the oldest token is
//!   just overwriting its slot; nothing is ever shifted or copied.
//! * RoPE: keys are stored rotated by their *absolute* position. For the ring,
//!   the in-cache distance between a query and a key equals their absolute
//!   distance, so no re-rotation is ever needed. Only the sinks sit closer to
//!   the query in the cache than in the sequence; once tokens have been
//!   evicted, the query is rotated a second time at its in-cache position
//!   (`capacity - 1`) for its dot products with the sinks. This is exactly
//!   StreamingLLM's "positions within the cache" at the cost of one extra
//!   rotation of the query per layer (see ARCHITECTURE.md).
//! * Prefix reuse: the cache remembers the token ids it has seen and
//!   [`KvCache::reuse_prefix`] keeps the longest common prefix with a new request.

use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::f16;

/// Element type of the stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDType {
    F32,
    F16,
}

impl KvDType {
    pub fn size(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::F16 => 2,
        }
    }
}

/// How big the cache is and how it evicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCacheConfig {
    /// Capacity in tokens (sinks included).
    pub window: usize,
    /// Leading tokens that are never evicted.
    pub sinks: usize,
    pub dtype: KvDType,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self { window: 2048, sinks: 4, dtype: KvDType::F32 }
    }
}

impl KvCacheConfig {
    /// Bytes one token costs across all layers (K and V).
    pub fn bytes_per_token(&self, n_layer: usize, kv_dim: usize) -> usize {
        2 * n_layer * kv_dim * self.dtype.size()
    }

    /// The largest window that fits `budget` bytes.
    pub fn window_for_budget(budget: usize, n_layer: usize, kv_dim: usize, dtype: KvDType) -> usize {
        let per = 2 * n_layer * kv_dim * dtype.size();
        budget / per.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::InvalidOption("kv window must be at least 1 token".into()));
        }
        if self.sinks >= self.window {
            return Err(Error::InvalidOption(format!(
                "kv window ({}) must be larger than the number of sink tokens ({})",
                self.window, self.sinks
            )));
        }
        Ok(())
    }
}

/// A snapshot of the cache's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub capacity: usize,
    pub used: usize,
    pub sinks: usize,
    pub evicted: usize,
    pub bytes: usize,
}

/// Preallocated storage of one layer's keys or values, `[n_kv, capacity, head_dim]`.
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    fn new(dtype: KvDType, n: usize) -> Self {
        match dtype {
            KvDType::F32 => Store::F32(vec![0.0; n]),
            KvDType::F16 => Store::F16(vec![f16::ZERO; n]),
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Store::F32(s) => s[at..at + x.len()].copy_from_slice(x),
            Store::F16(s) => s[at..at + x.len()].convert_from_f32_slice(x),
        }
    }

    /// The row at `at` as f32 (converted into `tmp` for f16 storage).
    #[inline]
    fn row<'a>(&'a self, at: usize, len: usize, tmp: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Store::F32(s) => &s[at..at + len],
            Store::F16(s) => {
                tmp.resize(len, 0.0);
                s[at..at + len].convert_to_f32_slice(tmp);
                &tmp[..]
            }
        }
    }
}

struct LayerCache {
    k: Store,
    v: Store,
}

/// Reusable buffers for [`KvCache::attend_token`] (nothing is allocated per token
/// once they have grown to the cache's size).
#[derive(Default)]
pub struct AttnScratch {
    q: Vec<f32>,
    q_sink: Vec<f32>,
    scores: Vec<f32>,
    row: Vec<f32>,
}

impl AttnScratch {
    fn prepare(&mut self, q: &[f32], q_sink: &[f32], scores: usize, hd: usize, f16: bool) {
        self.q.clear();
        self.q.extend_from_slice(q);
        self.q_sink.clear();
        self.q_sink.extend_from_slice(if q_sink.is_empty() { q } else { q_sink });
        if f16 {
            // With f16 storage the queries and the attention weights are rounded to
            // f16 too, as ggml does when it multiplies by an f16 cache (llama.cpp's
            // default): the f16 cache then reproduces llama.cpp's numerics.
            ops::round_f16(&mut self.q);
            ops::round_f16(&mut self.q_sink);
        }
        if self.scores.len() < scores {
            self.scores.resize(scores, 0.0);
        }
        if self.row.len() < hd {
            self.row.resize(hd, 0.0);
        }
    }
}

/// See the module documentation.
pub struct KvCache {
    cfg: KvCacheConfig,
    layers: Vec<LayerCache>,
    /// Every token id fed so far, in order (absolute positions `0..len`).
    tokens: Vec<u32>,
    n_kv: usize,
    head_dim: usize,
}

impl KvCache {
    pub fn new(cfg: KvCacheConfig, n_layer: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        cfg.validate()?;
        let n = n_kv * cfg.window * head_dim;
        let layers = (0..n_layer).map(|_| LayerCache { k: Store::new(cfg.dtype, n), v: Store::new(cfg.dtype, n) }).collect();
        Ok(Self { cfg, layers, tokens: Vec::new(), n_kv, head_dim })
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
    /// Bytes held by the preallocated K/V storage.
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.n_kv * self.cfg.window * self.head_dim * self.cfg.dtype.size()
    }
    pub fn stats(&self) -> KvStats {
        KvStats {
            capacity: self.capacity(),
            used: self.used(),
            sinks: self.sinks().min(self.len()),
            evicted: self.evicted(),
            bytes: self.bytes(),
        }
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

    /// Forgets everything (the storage stays allocated).
    pub fn reset(&mut self) {
        self.tokens.clear();
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
            if self.evicted() > 0 {
                self.tokens.clear();
                return 0;
            }
            self.tokens.truncate(keep);
        }
        keep
    }

    /// How many of `want` tokens the next chunk may hold: a chunk either fits
    /// without evicting, or starts on a full cache and evicts at most the ring.
    pub fn next_chunk(&self, want: usize) -> usize {
        let n = self.len();
        let cap = self.capacity();
        let limit = if n < cap { cap - n } else { self.ring() };
        want.min(limit).max(1)
    }

    /// True when this chunk's queries see the sinks at in-cache distance
    /// (tokens have been, or are being, evicted).
    pub fn shifted(&self) -> bool {
        self.len() >= self.capacity() && self.cfg.sinks > 0
    }

    /// In-cache position of the query at absolute position `p` once evictions happened.
    pub fn sink_query_position(&self) -> usize {
        self.capacity() - 1
    }

    /// Attention of one layer for the token at absolute position `p` (the
    /// tokens of a chunk are fed in order, `len()..len()+T`; call
    /// [`commit`](Self::commit) after the last layer).
    ///
    /// * `q`: `[n_head * head_dim]`, rotated at `p`;
    /// * `q_sink`: the same query rotated at [`sink_query_position`](Self::sink_query_position),
    ///   used for the sinks once `p >= capacity` (tokens have been evicted);
    /// * `k`, `v`: `[n_kv * head_dim]`, the key rotated at `p`.
    ///
    /// The key and value are written into their slot first (evicting the
    /// oldest ring entry once the cache is full: exactly the key that falls out
    /// of this token's window), then the query attends over every slot in use,
    /// in place. Later tokens of the chunk are not in the cache yet, so the
    /// chunk is causal without a mask. Writes `[n_head * head_dim]` to `out`.
    pub fn attend_token(&mut self, layer: usize, p: usize, q: &[f32], q_sink: &[f32], k: &[f32], v: &[f32], scratch: &mut AttnScratch, out: &mut [f32]) {
        let (hd, n_kv, cap, sinks) = (self.head_dim, self.n_kv, self.cfg.window, self.cfg.sinks);
        let n_head = q.len() / hd;
        let n_rep = n_head / n_kv;
        let slot = self.slot(p);
        let lc = &mut self.layers[layer];
        for g in 0..n_kv {
            let at = (g * cap + slot) * hd;
            lc.k.write(at, &k[g * hd..(g + 1) * hd]);
            lc.v.write(at, &v[g * hd..(g + 1) * hd]);
        }
        let used = (p + 1).min(cap);
        let shifted = p >= cap && sinks > 0;
        let scale = 1.0 / (hd as f32).sqrt();
        let f16 = self.cfg.dtype == KvDType::F16;
        scratch.prepare(q, q_sink, n_rep * cap, hd, f16);
        let AttnScratch { q, q_sink, scores, row } = scratch;
        let lc = &self.layers[layer];
        out.fill(0.0);
        for g in 0..n_kv {
            let heads = g * n_rep..(g + 1) * n_rep;
            for s in 0..used {
                let key = lc.k.row((g * cap + s) * hd, hd, row);
                let qs = if shifted && s < sinks { &q_sink[..] } else { &q[..] };
                for (r, h) in heads.clone().enumerate() {
                    scores[r * cap + s] = ops::dot(&qs[h * hd..(h + 1) * hd], key) * scale;
                }
            }
            for r in 0..n_rep {
                let sc = &mut scores[r * cap..r * cap + used];
                ops::softmax(sc);
                if f16 {
                    ops::round_f16(sc);
                }
            }
            for s in 0..used {
                let val = lc.v.row((g * cap + s) * hd, hd, row);
                for (r, h) in heads.clone().enumerate() {
                    ops::axpy(scores[r * cap + s], val, &mut out[h * hd..(h + 1) * hd]);
                }
            }
        }
    }

    /// Records that the chunk's tokens are now in every layer.
    pub fn commit(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
    }
}
