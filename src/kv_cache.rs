//! The bounded sliding-window KV cache: the heart of kvchat.
//!
//! * Preallocated: one K and one V tensor per layer, `[n_kv_head, capacity, head_dim]`,
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

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};

/// Element type of the stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDType {
    F32,
    F16,
}

impl KvDType {
    fn dtype(self) -> DType {
        match self {
            KvDType::F32 => DType::F32,
            KvDType::F16 => DType::F16,
        }
    }
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

struct LayerCache {
    k: Tensor,
    v: Tensor,
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
    pub fn new(cfg: KvCacheConfig, n_layer: usize, n_kv: usize, head_dim: usize, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let layers = (0..n_layer)
            .map(|_| -> Result<LayerCache> {
                let shape = (n_kv, cfg.window, head_dim);
                Ok(LayerCache {
                    k: Tensor::zeros(shape, cfg.dtype.dtype(), device)?,
                    v: Tensor::zeros(shape, cfg.dtype.dtype(), device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
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

    /// Attention of one layer for a chunk of `T` new tokens at positions
    /// `len()..len()+T` (a chunk planned with [`next_chunk`](Self::next_chunk)).
    ///
    /// * `q`: `[n_head, T, head_dim]`, rotated at the absolute positions;
    /// * `q_sink`: the same queries rotated at [`sink_query_position`](Self::sink_query_position),
    ///   required when [`shifted`](Self::shifted);
    /// * `k`, `v`: `[n_kv, T, head_dim]`, keys rotated at the absolute positions.
    ///
    /// Writes `k`, `v` into their slots and returns `[T, n_head * head_dim]`.
    /// Call [`commit`](Self::commit) after the last layer.
    pub fn attend(&mut self, layer: usize, q: &Tensor, q_sink: Option<&Tensor>, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (n_head, t, hd) = q.dims3()?;
        let n_rep = n_head / self.n_kv;
        let n0 = self.len();
        let cap = self.capacity();
        let sinks = self.cfg.sinks;
        let scale = 1.0 / (hd as f64).sqrt();
        let shifted = self.shifted();
        let q_sink = if shifted {
            Some(q_sink.ok_or_else(|| Error::Backend("sink queries required once the cache is full".into()))?)
        } else {
            None
        };
        // [n_kv, n_rep*T, hd]: query heads sharing a kv head are adjacent.
        let dtype = self.cfg.dtype;
        // With f16 storage, the queries and the attention weights are rounded to
        // f16 too, as ggml does when it multiplies by an f16 cache (llama.cpp's
        // default): the f16 cache then reproduces llama.cpp's numerics.
        let round = |x: &Tensor| -> candle_core::Result<Tensor> {
            if dtype == KvDType::F16 {
                x.to_dtype(DType::F16)?.to_dtype(DType::F32)
            } else {
                Ok(x.clone())
            }
        };
        let group = |x: &Tensor| round(&x.reshape((self.n_kv, n_rep * t, hd))?);
        let qg = group(q)?;
        let qsg = q_sink.map(group).transpose()?;
        let cast = |x: Tensor| -> Result<Tensor> {
            Ok(if dtype == KvDType::F32 { x } else { x.to_dtype(DType::F32)? })
        };

        let out = if t == 1 {
            // Decode: the new token evicts the slot it overwrites, which is exactly
            // the key that falls out of its window. Write first, attend over the cache.
            self.write(layer, k, v, n0)?;
            let used = (n0 + 1).min(cap);
            let lc = &self.layers[layer];
            let scores = match &qsg {
                Some(qs) => {
                    let ks = cast(lc.k.narrow(1, 0, sinks)?)?;
                    let kr = cast(lc.k.narrow(1, sinks, used - sinks)?)?;
                    let a = qs.matmul(&ks.t()?)?;
                    let b = qg.matmul(&kr.t()?)?;
                    Tensor::cat(&[a, b], D::Minus1)?
                }
                None => qg.matmul(&cast(lc.k.narrow(1, 0, used)?)?.t()?)?,
            };
            let p = round(&candle_nn::ops::softmax_last_dim(&(scores * scale)?)?)?;
            p.matmul(&cast(lc.v.narrow(1, 0, used)?)?.contiguous()?)?
        } else {
            // Prefill chunk: attend over [old cache | new keys] without
            // concatenating the cache, with a mask that hides the old keys each
            // row's window has already dropped and the future new keys.
            let used = n0.min(cap);
            let lc = &self.layers[layer];
            let mut parts = Vec::with_capacity(3);
            let mut vparts: Vec<Tensor> = Vec::with_capacity(2);
            if used > 0 {
                match &qsg {
                    Some(qs) => {
                        parts.push(qs.matmul(&cast(lc.k.narrow(1, 0, sinks)?)?.t()?)?);
                        parts.push(qg.matmul(&cast(lc.k.narrow(1, sinks, used - sinks)?)?.t()?)?);
                    }
                    None => parts.push(qg.matmul(&cast(lc.k.narrow(1, 0, used)?)?.t()?)?),
                }
                vparts.push(cast(lc.v.narrow(1, 0, used)?)?);
            }
            parts.push(qg.matmul(&round(k)?.t()?)?);
            vparts.push(round(v)?);
            let scores = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(&parts, D::Minus1)? };
            let width = used + t;
            // Mask rows are the chunk positions; columns: cache slots 0..used, then new keys.
            let ring = self.ring();
            let mut mask = vec![0f32; t * width];
            for j in 0..t {
                let p = n0 + j;
                let row = &mut mask[j * width..(j + 1) * width];
                for (slot, m) in row[..used].iter_mut().enumerate() {
                    let a = self.abs_position_of_slot(slot, n0);
                    if a >= sinks && p - a >= ring {
                        *m = f32::NEG_INFINITY;
                    }
                }
                for (jj, m) in row[used..].iter_mut().enumerate() {
                    if jj > j {
                        *m = f32::NEG_INFINITY;
                    }
                }
            }
            let mask = Tensor::from_vec(mask, (t, width), q.device())?;
            let scores = (scores * scale)?.reshape((self.n_kv, n_rep, t, width))?.broadcast_add(&mask)?;
            let p = round(&candle_nn::ops::softmax_last_dim(&scores)?.reshape((self.n_kv, n_rep * t, width))?)?;
            let out = if used > 0 {
                let pc = p.narrow(D::Minus1, 0, used)?.contiguous()?;
                let pn = p.narrow(D::Minus1, used, t)?.contiguous()?;
                (pc.matmul(&vparts[0].contiguous()?)? + pn.matmul(&vparts[1])?)?
            } else {
                p.matmul(&vparts[0])?
            };
            self.write(layer, k, v, n0)?;
            out
        };
        // [n_kv, n_rep*T, hd] -> [n_head, T, hd] -> [T, n_head*hd]
        Ok(out.reshape((n_head, t, hd))?.transpose(0, 1)?.reshape((t, n_head * hd))?)
    }

    /// Absolute position held by `slot` when the cache has seen `n` tokens.
    fn abs_position_of_slot(&self, slot: usize, n: usize) -> usize {
        let s = self.cfg.sinks;
        if slot < s {
            return slot;
        }
        let ring = self.ring();
        // The newest position p < n with slot(p) == slot.
        let last = n - 1; // n > 0 whenever a slot is in use
        let last_slot = self.slot(last);
        let back = (last_slot + ring - slot) % ring;
        last - back
    }

    /// Records that the chunk's tokens are now in every layer.
    pub fn commit(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
    }

    fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor, n0: usize) -> Result<()> {
        let t = k.dim(1)?;
        let dtype = self.cfg.dtype.dtype();
        let k = k.to_dtype(dtype)?.contiguous()?;
        let v = v.to_dtype(dtype)?.contiguous()?;
        // Split the chunk into runs of consecutive slots.
        let mut j = 0;
        while j < t {
            let slot = self.slot(n0 + j);
            let mut run = 1;
            while j + run < t && self.slot(n0 + j + run) == slot + run {
                run += 1;
            }
            let lc = &self.layers[layer];
            lc.k.slice_set(&k.narrow(1, j, run)?.contiguous()?, 1, slot)?;
            lc.v.slice_set(&v.narrow(1, j, run)?.contiguous()?, 1, slot)?;
            j += run;
        }
        Ok(())
    }
}
