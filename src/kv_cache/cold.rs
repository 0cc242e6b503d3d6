//! The cold tier: keys and values that left the hot ring, kept compressed in
//! blocks, each with a summary of its keys, so that a query can bring back
//! the blocks it needs (recall) while memory stays fixed.
//!
//! * Tokens leave the ring in order; [`BLOCK`] consecutive ones form a block
//!   (a block becomes recallable once it is complete).
//! * Keys arrive rotated at their absolute position and are stored
//!   un-rotated (position-free): a block is scored against the query's
//!   content alone, and placed at a bounded position when recalled.
//! * 8 or 4 bits, split as KIVI does: keys per channel (each channel's min and
//!   max over the block, kept in f32, which is also the block's summary),
//!   values per token (min and step in f16).
//! * The store is a ring of blocks: past its capacity the oldest block is
//!   evicted (block `id` lives at `id % blocks`).
//! * Recall: per kv head, every stored block is scored with Quest's upper
//!   bound of a dot product, `Σ_c max(q_c·min_c, q_c·max_c)`, summed over
//!   the query heads of the group and the tokens of the step (the best of
//!   them alone picks a block that one query likes over the one they all
//!   need: on the pass-key test at 7,337 tokens the maximum missed the key
//!   placed mid-text, the sum finds it; summed over the queries, the bound is
//!   linear in the queries' positive and negative parts, so a block costs one
//!   pass over its summary however long the step); the best `slots` blocks are held in
//!   recall slots. A block that stays selected
//!   stays in its slot (it is not dequantized again); a newly selected one
//!   takes a slot whose block was not selected. Slots fill from the first and
//!   are never emptied, so the recalled rows are one contiguous run.
//!
//! The arithmetic is plain Rust with explicit eight-lane sums, the same on
//! every target, so native and wasm select the same blocks and recall the
//! same bits.

use super::cold_block::{quantize_keys, quantize_values, StoredBlock};
#[cfg(test)]
use super::cold_block::DequantScratch;
use super::image::{ImageReader, ImageWriter};
use crate::backend::cpu::ops::{prefetch, CacheLevel};
use crate::error::{Error, Result};
use half::f16;

/// Tokens per cold block.
pub const BLOCK: usize = 32;

/// How much better (relatively) a block's score must be to take the slot of
/// a block that is held: consecutive queries that rank near-equal blocks in
/// different orders would otherwise reload blocks at every step. 1%: on the
/// 3,715-token pass-key text a decode step loads 31 blocks over 90 layer and
/// kv-head pairs (192 with no margin); 5% loaded 5.3 but held stale blocks
/// (GPL-3's perplexity 18.351 at 5% against 18.271 at 1%, recalling every token).
const HOLD_MARGIN: f32 = 0.01;

/// Bits per stored key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdBits {
    Eight,
    Four,
}

impl ColdBits {
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            8 => Ok(ColdBits::Eight),
            4 => Ok(ColdBits::Four),
            _ => Err(Error::InvalidOption(format!("the cold KV tier stores 8 or 4 bits, not {bits}"))),
        }
    }

    pub fn bits(self) -> usize {
        match self {
            ColdBits::Eight => 8,
            ColdBits::Four => 4,
        }
    }

    pub(super) fn levels(self) -> i32 {
        (1 << self.bits()) - 1
    }

    /// Bytes of `n` codes (`n` even).
    pub(super) fn bytes(self, n: usize) -> usize {
        n * self.bits() / 8
    }
}

/// The cold tier's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdConfig {
    /// Tokens the store holds (whole blocks); past it the oldest block is evicted.
    pub capacity: usize,
    pub bits: ColdBits,
    /// Tokens recalled per step (whole blocks), for each layer and kv head.
    pub recall: usize,
}

impl ColdConfig {
    pub fn blocks(&self) -> usize {
        self.capacity / BLOCK
    }

    /// Recall slots, one block each.
    pub fn slots(&self) -> usize {
        self.recall / BLOCK
    }

    /// Rows of a layer's store that hold recalled keys (after the window's).
    pub fn recall_rows(&self) -> usize {
        self.slots() * BLOCK
    }

    pub fn validate(&self) -> Result<()> {
        if self.capacity < BLOCK || self.recall < BLOCK {
            return Err(Error::InvalidOption(format!(
                "the cold KV tier needs a capacity and a recall budget of at least one block ({BLOCK} tokens); got {} and {}",
                self.capacity, self.recall
            )));
        }
        if self.recall > self.capacity {
            return Err(Error::InvalidOption(format!("a recall budget ({}) larger than the cold tier ({})", self.recall, self.capacity)));
        }
        if self.capacity > 1 << 24 {
            return Err(Error::InvalidOption(format!("a cold tier of {} tokens (at most {})", self.capacity, 1 << 24)));
        }
        Ok(())
    }

    /// Bytes of one block of one kv head of `head_dim` channels: codes, key ranges, value parameters.
    pub fn block_bytes(&self, head_dim: usize) -> usize {
        2 * self.bits.bytes(BLOCK * head_dim) + 2 * head_dim * 4 + BLOCK * 2 * 2
    }

    /// Bytes one layer's store takes (the recall rows live in the hot store).
    pub fn layer_bytes(&self, n_kv: usize, head_dim: usize) -> usize {
        self.blocks() * n_kv * self.block_bytes(head_dim)
    }
}

/// Occupancy of the cold tier (every layer holds the same tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ColdStats {
    /// Tokens it can hold.
    pub capacity: usize,
    /// Tokens it holds (whole blocks).
    pub used: usize,
    /// Bytes of every layer's store.
    pub bytes: usize,
    /// Tokens evicted from it (gone for good).
    pub evicted: usize,
    /// Tokens recalled into each layer and kv head at the last step.
    pub recalled_tokens: usize,
    /// Blocks dequantized into recall slots so far (over layers and kv heads).
    pub loads: usize,
}

/// One layer's cold store, every kv head.
pub struct ColdLayer {
    cfg: ColdConfig,
    n_kv: usize,
    hd: usize,
    /// `[n_kv][blocks][BLOCK × head_dim codes]`, token-major (4 bits: two channels a byte, see `cold_block`).
    k_codes: Vec<u8>,
    /// `[n_kv][blocks][min × head_dim, max × head_dim]`.
    k_range: Vec<f32>,
    v_codes: Vec<u8>,
    /// `[n_kv][blocks][BLOCK][min, step]`.
    v_params: Vec<f16>,
    /// The block being filled: `[BLOCK][n_kv × head_dim]`, keys un-rotated.
    pending_k: Vec<f32>,
    pending_v: Vec<f32>,
    /// `[n_kv][slots]`: the block each recall slot holds.
    slots: Vec<Option<usize>>,
    /// The cache length at the last recall (a shorter one means it was emptied).
    last_len: usize,
    loads: usize,
    /// Block scores of one recall, reused.
    scored: Vec<(f32, usize)>,
    /// The step's queries split by sign (see [`split_signs`]), reused.
    query_signs: Vec<f32>,
}

impl ColdLayer {
    pub fn new(cfg: ColdConfig, n_kv: usize, hd: usize) -> Self {
        let blocks = cfg.blocks();
        let codes = n_kv * blocks * cfg.bits.bytes(BLOCK * hd);
        Self {
            cfg,
            n_kv,
            hd,
            k_codes: vec![0; codes],
            k_range: vec![0.0; n_kv * blocks * 2 * hd],
            v_codes: vec![0; codes],
            v_params: vec![f16::ZERO; n_kv * blocks * BLOCK * 2],
            pending_k: vec![0.0; BLOCK * n_kv * hd],
            pending_v: vec![0.0; BLOCK * n_kv * hd],
            slots: vec![None; n_kv * cfg.slots()],
            last_len: 0,
            loads: 0,
            scored: Vec::new(),
            query_signs: Vec::new(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.cfg.layer_bytes(self.n_kv, self.hd)
    }

    pub fn head_dim(&self) -> usize {
        self.hd
    }

    pub fn loads(&self) -> usize {
        self.loads
    }

    /// Recall slots holding a block (the same for every kv head).
    pub fn filled(&self) -> usize {
        self.slots[..self.cfg.slots()].iter().filter(|s| s.is_some()).count()
    }

    /// The blocks held in recall slots, each with how many of this layer's kv heads hold it.
    pub fn held(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().filter_map(|s| *s)
    }

    /// Forgets what the recall slots hold (the cache was emptied or copied over).
    pub fn forget_slots(&mut self) {
        self.slots.fill(None);
        self.last_len = 0;
    }

    /// The keys (un-rotated) and values of cold token `index` (its position
    /// minus the sinks), all kv heads; seals its block when it is the last.
    /// Returns the pending key row to be un-rotated in place by the caller first.
    pub fn pending_rows(&mut self, index: usize) -> (&mut [f32], &mut [f32]) {
        let (kvd, at) = (self.n_kv * self.hd, index % BLOCK);
        (&mut self.pending_k[at * kvd..(at + 1) * kvd], &mut self.pending_v[at * kvd..(at + 1) * kvd])
    }

    /// Quantizes the pending block as block `index / BLOCK` when `index` completed it.
    pub fn seal_if_complete(&mut self, index: usize) {
        if index % BLOCK != BLOCK - 1 {
            return;
        }
        let (hd, kvd, bits) = (self.hd, self.n_kv * self.hd, self.cfg.bits);
        let at = (index / BLOCK) % self.cfg.blocks();
        for g in 0..self.n_kv {
            let b = g * self.cfg.blocks() + at;
            let code_bytes = bits.bytes(BLOCK * hd);
            let range = &mut self.k_range[b * 2 * hd..(b + 1) * 2 * hd];
            let codes = &mut self.k_codes[b * code_bytes..(b + 1) * code_bytes];
            quantize_keys(&self.pending_k, kvd, g * hd, hd, bits, range, codes);
            let params = &mut self.v_params[b * BLOCK * 2..(b + 1) * BLOCK * 2];
            let codes = &mut self.v_codes[b * code_bytes..(b + 1) * code_bytes];
            quantize_values(&self.pending_v, kvd, g * hd, hd, bits, params, codes);
        }
    }

    /// The stored blocks' ids after `left` tokens have left the ring.
    pub fn stored(&self, left: usize) -> std::ops::Range<usize> {
        let complete = left / BLOCK;
        complete.saturating_sub(self.cfg.blocks())..complete
    }

    /// Chooses the blocks kv head `g` recalls for `queries` (rows of
    /// `head_dim`: the group's query heads, un-rotated, for each token of the
    /// chunk) among the blocks `stored`, and returns the slots to fill as
    /// `(slot, block id)` into `loads`. `len` is the cache's length.
    pub fn select(&mut self, g: usize, queries: &[f32], stored: std::ops::Range<usize>, len: usize, loads: &mut Vec<(usize, usize)>) {
        loads.clear();
        if len < self.last_len {
            self.forget_slots();
        }
        self.last_len = len;
        let (hd, blocks, n_slots) = (self.hd, self.cfg.blocks(), self.cfg.slots());
        split_signs(queries, hd, &mut self.query_signs);
        let held = &self.slots[g * n_slots..(g + 1) * n_slots];
        let ranges = &self.k_range[g * blocks * 2 * hd..(g + 1) * blocks * 2 * hd];
        score_blocks(&self.query_signs, ranges, hd, stored, held, &mut self.scored);
        // Best score first; among equal scores the newer block.
        let order = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1));
        if self.scored.len() > n_slots {
            self.scored.select_nth_unstable_by(n_slots - 1, order);
            self.scored.truncate(n_slots);
        }
        self.scored.sort_unstable_by(order);
        let slots = &mut self.slots[g * n_slots..(g + 1) * n_slots];
        let chosen = |id: usize, scored: &[(f32, usize)]| scored.iter().any(|s| s.1 == id);
        for &(_, id) in &self.scored {
            if slots.contains(&Some(id)) {
                continue;
            }
            let free = slots.iter().position(|s| s.is_none_or(|held| !chosen(held, &self.scored)));
            if let Some(slot) = free {
                slots[slot] = Some(id);
                loads.push((slot, id));
            }
        }
        self.loads += loads.len();
    }

    /// The blocks kv head `g`'s recall slots hold, slot by slot (filled from the first).
    pub fn slots_of(&self, g: usize) -> &[Option<usize>] {
        let n = self.cfg.slots();
        &self.slots[g * n..(g + 1) * n]
    }

    /// Block `id` of kv head `g` as stored.
    pub fn block(&self, g: usize, id: usize) -> StoredBlock<'_> {
        let (hd, bits) = (self.hd, self.cfg.bits);
        let b = g * self.cfg.blocks() + id % self.cfg.blocks();
        let code_bytes = bits.bytes(BLOCK * hd);
        let (k_lo, k_hi) = self.k_range[b * 2 * hd..(b + 1) * 2 * hd].split_at(hd);
        StoredBlock {
            bits,
            k_codes: &self.k_codes[b * code_bytes..(b + 1) * code_bytes],
            k_lo,
            k_hi,
            v_codes: &self.v_codes[b * code_bytes..(b + 1) * code_bytes],
            v_params: &self.v_params[b * BLOCK * 2..(b + 1) * BLOCK * 2],
        }
    }

    /// Block `id` of kv head `g` dequantized: keys (un-rotated) and values, `[BLOCK][head_dim]` each.
    #[cfg(test)]
    fn dequantize(&self, g: usize, id: usize, k: &mut [f32], v: &mut [f32]) {
        let mut scratch = DequantScratch::default();
        self.block(g, id).dequantize(self.hd, &mut scratch, k, v);
    }
}

/// Saved sessions: the stored blocks, the block being filled, the recall slots.
impl ColdLayer {
    /// Blocks written after `left` tokens left the ring (the ring's first `m`).
    fn written(&self, left: usize) -> usize {
        (left / BLOCK).min(self.cfg.blocks())
    }

    pub fn write_image(&self, w: &mut ImageWriter, left: usize) {
        let (m, blocks, hd, cb) = (self.written(left), self.cfg.blocks(), self.hd, self.cfg.bits.bytes(BLOCK * self.hd));
        for g in 0..self.n_kv {
            let b = g * blocks;
            w.bytes(&self.k_codes[b * cb..(b + m) * cb]);
            w.f32s(&self.k_range[b * 2 * hd..(b + m) * 2 * hd]);
            w.bytes(&self.v_codes[b * cb..(b + m) * cb]);
            w.f16s(&self.v_params[b * BLOCK * 2..(b + m) * BLOCK * 2]);
        }
        w.f32s(&self.pending_k);
        w.f32s(&self.pending_v);
        w.len(self.slots.len());
        for s in &self.slots {
            w.u64(s.map_or(u64::MAX, |id| id as u64));
        }
        w.len(self.last_len);
        w.len(self.loads);
    }

    pub fn read_image(&mut self, r: &mut ImageReader, left: usize) -> Result<()> {
        let (m, blocks, hd, cb) = (self.written(left), self.cfg.blocks(), self.hd, self.cfg.bits.bytes(BLOCK * self.hd));
        for g in 0..self.n_kv {
            let b = g * blocks;
            r.bytes(&mut self.k_codes[b * cb..(b + m) * cb], "cold key codes")?;
            r.f32s(&mut self.k_range[b * 2 * hd..(b + m) * 2 * hd], "cold key ranges")?;
            r.bytes(&mut self.v_codes[b * cb..(b + m) * cb], "cold value codes")?;
            r.f16s(&mut self.v_params[b * BLOCK * 2..(b + m) * BLOCK * 2], "cold value scales")?;
        }
        r.f32s(&mut self.pending_k, "the cold block being filled")?;
        r.f32s(&mut self.pending_v, "the cold block being filled")?;
        r.len(self.slots.len(), "recall slots")?;
        let stored = self.stored(left);
        let n_slots = self.cfg.slots();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            *slot = match r.u64("a recall slot")? {
                u64::MAX => None,
                id if (id as usize) < stored.end => Some(id as usize),
                id => return Err(Error::Session(format!("recall slot {} holds block {id}, which was never written", i % n_slots))),
            };
        }
        self.last_len = r.u64("the cache length")? as usize;
        self.loads = r.u64("the load count")? as usize;
        Ok(())
    }
}

/// How many blocks ahead [`score_blocks`] asks for summaries (8 KB of them at head size 64).
const SUMMARIES_AHEAD: usize = 16;

/// Every stored block of one kv head (`ranges`: its blocks' key ranges)
/// scored against the queries' channels summed by sign (`signs`), a held
/// block's score raised by the hold margin, into `scored`. (Compiling this
/// loop with AVX2 as well changed nothing measurable: at decode it waits on
/// the summaries' memory, ~6 MB a step at 4k tokens, not on arithmetic.)
fn score_blocks(signs: &[f32], ranges: &[f32], hd: usize, stored: std::ops::Range<usize>, held: &[Option<usize>], scored: &mut Vec<(f32, usize)>) {
    let (positive, negative) = signs.split_at(hd);
    let blocks = ranges.len() / (2 * hd);
    scored.clear();
    for id in stored {
        let b = id % blocks;
        // The summary SUMMARIES_AHEAD blocks on: more reads in flight than the hardware
        // prefetcher keeps (a no-op in wasm; a block past the last stored one is harmless).
        let next = (id + SUMMARIES_AHEAD) % blocks;
        prefetch(&ranges[next * 2 * hd..(next + 1) * 2 * hd], CacheLevel::First);
        let (lo, hi) = ranges[b * 2 * hd..(b + 1) * 2 * hd].split_at(hd);
        let mut score = upper_bound(positive, negative, lo, hi);
        if held.contains(&Some(id)) {
            // Hysteresis: a held block is only replaced by a clearly better one.
            score += HOLD_MARGIN * score.abs();
        }
        if score.is_nan() {
            // Hostile ranges (infinite or NaN keys) give 0·inf: such a block ranks last, and
            // the same on every machine (a NaN's sign, which total_cmp orders by, is not).
            score = f32::NEG_INFINITY;
        }
        scored.push((score, id));
    }
}

/// The queries' channels summed by sign: `out[..hd]` = Σ max(q_c, 0) and
/// `out[hd..]` = Σ min(q_c, 0) over the query rows, in row order.
fn split_signs(queries: &[f32], hd: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(2 * hd, 0.0);
    let (positive, negative) = out.split_at_mut(hd);
    for q in queries.chunks_exact(hd) {
        for c in 0..hd {
            let x = q[c];
            positive[c] += if x > 0.0 { x } else { 0.0 };
            negative[c] += if x < 0.0 { x } else { 0.0 };
        }
    }
}

/// Quest's bound on `Σ_q q · k` for any key `k` within `[lo, hi]` per
/// channel, over every query of the step: `Σ_q Σ_c max(q_c·lo_c, q_c·hi_c)`,
/// which (as `lo_c <= hi_c`) is `Σ_c hi_c·positive_c + lo_c·negative_c` with
/// the queries' channels summed by sign ([`split_signs`]): one pass over the
/// block's summary however many queries the step has. Summed in eight lanes
/// combined pairwise (the same order everywhere).
#[inline(always)]
fn upper_bound(positive: &[f32], negative: &[f32], lo: &[f32], hi: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = positive.len() / 8 * 8;
    for (((p, m), l), h) in positive[..n].chunks_exact(8).zip(negative.chunks_exact(8)).zip(lo.chunks_exact(8)).zip(hi.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += h[i] * p[i] + l[i] * m[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in n..positive.len() {
        s += hi[i] * positive[i] + lo[i] * negative[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(bits: ColdBits) -> ColdLayer {
        ColdLayer::new(ColdConfig { capacity: 4 * BLOCK, bits, recall: 2 * BLOCK }, 2, 16)
    }

    /// Fills block `id` of both heads with `f(token, channel)` (head 1 negated).
    fn fill(c: &mut ColdLayer, id: usize, f: impl Fn(usize, usize) -> f32) {
        for t in 0..BLOCK {
            let index = id * BLOCK + t;
            let (k, v) = c.pending_rows(index);
            for ch in 0..32 {
                let x = f(t, ch % 16) * if ch < 16 { 1.0 } else { -1.0 };
                k[ch] = x;
                v[ch] = 0.5 * x;
            }
            c.seal_if_complete(index);
        }
    }

    #[test]
    fn blocks_come_back_within_a_quantization_step() {
        for (bits, tol) in [(ColdBits::Eight, 1.0 / 255.0), (ColdBits::Four, 1.0 / 15.0)] {
            let mut c = layer(bits);
            let f = |t: usize, ch: usize| ((t * 7 + ch * 3) % 11) as f32 / 5.0 - 1.0;
            fill(&mut c, 0, f);
            let (mut k, mut v) = (vec![0.0; BLOCK * 16], vec![0.0; BLOCK * 16]);
            for g in 0..2 {
                c.dequantize(g, 0, &mut k, &mut v);
                let sign = if g == 0 { 1.0 } else { -1.0 };
                for t in 0..BLOCK {
                    for ch in 0..16 {
                        let x = sign * f(t, ch);
                        // range 2: half a step is tol; the f16 value parameters add a little.
                        assert!((k[t * 16 + ch] - x).abs() <= tol * 1.01, "{bits:?} key {t},{ch}: {} vs {x}", k[t * 16 + ch]);
                        assert!((v[t * 16 + ch] - 0.5 * x).abs() <= tol * 0.51, "{bits:?} value {t},{ch}");
                    }
                }
            }
        }
    }

    #[test]
    fn recall_picks_the_matching_block_and_keeps_slots() {
        let mut c = layer(ColdBits::Eight);
        // Four blocks; block 2's keys point along channel 5, the others are small noise.
        for id in 0..4 {
            fill(&mut c, id, |t, ch| if id == 2 && ch == 5 { 3.0 } else { ((t + ch + id) % 3) as f32 * 0.01 });
        }
        let mut q = vec![0.0; 16];
        q[5] = 1.0;
        let mut loads = Vec::new();
        c.select(0, &q, c.stored(4 * BLOCK), 500, &mut loads);
        assert_eq!(loads.len(), 2);
        assert!(loads.iter().any(|&(_, id)| id == 2), "{loads:?}");
        // The same query again: nothing to load.
        c.select(0, &q, c.stored(4 * BLOCK), 501, &mut loads);
        assert!(loads.is_empty());
        // A fifth block evicts block 0 (capacity 4): the stored range moves.
        fill(&mut c, 4, |_, ch| if ch == 9 { 3.0 } else { 0.0 });
        assert_eq!(c.stored(5 * BLOCK), 1..5);
        q[5] = 0.0;
        q[9] = 1.0;
        c.select(0, &q, c.stored(5 * BLOCK), 540, &mut loads);
        assert!(loads.iter().any(|&(_, id)| id == 4), "{loads:?}");
        assert_eq!(c.filled(), 2);
        // A shorter cache (emptied) forgets the slots.
        c.select(0, &q, 0..0, 10, &mut loads);
        assert_eq!(c.filled(), 0);
    }

    #[test]
    fn the_summed_bound_equals_quests_bound_per_query() {
        let mut seed = 0x9e37_79b9_u32;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        let hd = 24;
        for queries in [1, 3, 96] {
            let q: Vec<f32> = (0..queries * hd).map(|_| rand()).collect();
            let (a, b): (Vec<f32>, Vec<f32>) = (0..hd).map(|_| (rand(), rand())).unzip();
            let (lo, hi): (Vec<f32>, Vec<f32>) = a.iter().zip(&b).map(|(&x, &y)| (x.min(y), x.max(y))).unzip();
            let per_query: f64 = q.chunks_exact(hd).flat_map(|q| (0..hd).map(|c| (q[c] * lo[c]).max(q[c] * hi[c]) as f64)).sum();
            let mut signs = Vec::new();
            split_signs(&q, hd, &mut signs);
            let got = upper_bound(&signs[..hd], &signs[hd..], &lo, &hi) as f64;
            assert!((got - per_query).abs() <= 1e-4 * per_query.abs().max(1.0), "{queries} queries: {got} vs {per_query}");
        }
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let mut c = layer(ColdBits::Four);
        fill(&mut c, 0, |t, _| [f32::NAN, f32::INFINITY, -1e30, 1e30][t % 4]);
        let (mut k, mut v) = (vec![0.0; BLOCK * 16], vec![0.0; BLOCK * 16]);
        c.dequantize(1, 0, &mut k, &mut v);
        let mut loads = Vec::new();
        c.select(0, &[f32::NAN; 16], c.stored(BLOCK), 100, &mut loads);
    }

    #[test]
    fn the_cold_tier_costs_under_a_third_of_f32_at_8_bits() {
        for (bits, limit) in [(ColdBits::Eight, 0.3), (ColdBits::Four, 0.17)] {
            let cfg = ColdConfig { capacity: 1024, bits, recall: 256 };
            for hd in [64, 128, 256] {
                let per_token = cfg.block_bytes(hd) as f64 / BLOCK as f64;
                let hot = (2 * hd * 4) as f64;
                assert!(per_token / hot <= limit, "{bits:?} head_dim {hd}: {:.3}", per_token / hot);
            }
        }
    }
}
