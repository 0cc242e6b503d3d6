//! The keys and values recalled from the cold tier: the blocks held in a
//! layer's recall slots dequantized, their keys rotated at the slots'
//! in-cache positions (`sinks + row`). Two ways to keep them, chosen per
//! target by measurement, the same bits either way (the same
//! dequantization, rotation and f16 rounding; `tests/cold_bits.rs`):
//!
//! * **Natively, nothing outlives its layer.** A one-token step (decode; a
//!   batch) dequantizes each block into a small tile right where attention
//!   reads it ([`HeldBlocks`]): keys scored block by block, values summed
//!   block by block, from the codes (a quarter of the bytes at 8 bits). A
//!   prefill chunk, whose tokens share a recall, fills one layer's rows once
//!   and refills only the slots a later recall of that layer changed. Rows
//!   kept for every layer (30 × 3 × 512 rows of f32 keys and values for
//!   SmolLM2 at recall 512: 23.6 MB) were read from memory at every step and
//!   evicted the weights from the CPU's cache: at 3.7k tokens decode ran at
//!   0.77× the plain window's speed, 0.89× with tiles.
//! * **In wasm, rows for every layer**, refilled only where a recall loaded a
//!   new block (31 blocks a step over 90 layer and kv-head pairs on the
//!   pass-key text): with 128-bit vectors, dequantizing all 1,440 held blocks
//!   every step cost more than reading the rows (headless Chromium, 3.7k
//!   tokens, per decode token: attention 7.7 ms with tiles against 2.2 for the
//!   plain window).

use super::cold::{ColdLayer, BLOCK};
use super::cold_block::DequantScratch;
use crate::backend::cpu::attention::RecalledBlocks;
use crate::backend::cpu::ops::{self, CacheLevel, RopeStyle};

/// Where recalled keys go: the layer's RoPE and the angles of the recall
/// rows' in-cache positions (`sinks + row`), `recall_rows × head_dim / 2` each.
pub struct RecallRope<'a> {
    pub rotate: RopeStyle,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// What the recalled rows hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Nothing,
    /// Layer `layer`'s `rows` recalled rows per kv head, dequantized.
    Rows { layer: usize, rows: usize },
    /// Layer `layer`'s recall, to be dequantized block by block as it is attended.
    Blocks { layer: usize, rows: usize },
}

/// How one layer's attention reads its recalled keys (see the module documentation).
pub enum RecalledFor<'a> {
    None,
    Rows(&'a RecalledRows),
    Blocks,
}

/// Whether every layer keeps its recalled rows (see the module documentation).
pub const ROWS_FOR_EVERY_LAYER: bool = cfg!(target_arch = "wasm32");

/// See the module documentation.
pub struct RecalledRows {
    /// The row set each layer uses (`None`: a layer without a cold tier).
    set_of: Vec<Option<usize>>,
    /// What each row set holds.
    held: Vec<Held>,
    n_kv: usize,
    /// Rows per kv head (the recall budget).
    per_head: usize,
    head_dim: usize,
    /// `[sets][n_kv][per_head][head_dim]` keys and values.
    k: Vec<f32>,
    v: Vec<f32>,
    scratch: DequantScratch,
}

impl RecalledRows {
    /// Rows for the layers with a cold tier (`cold[layer]`): one set they share, or one each.
    pub fn new(cold: &[bool], n_kv: usize, per_head: usize, head_dim: usize) -> Self {
        let mut sets = 0;
        let set_of = cold
            .iter()
            .map(|&c| {
                let set = c.then_some(sets);
                if c && ROWS_FOR_EVERY_LAYER {
                    sets += 1;
                }
                set
            })
            .collect();
        let sets = if ROWS_FOR_EVERY_LAYER { sets } else { 1 };
        let n = sets * n_kv * per_head * head_dim;
        Self { set_of, held: vec![Held::Nothing; sets], n_kv, per_head, head_dim, k: vec![0.0; n], v: vec![0.0; n], scratch: DequantScratch::default() }
    }

    /// Row sets a cache with `cold_layers` layers with a cold tier holds.
    pub fn sets(cold_layers: usize) -> usize {
        if ROWS_FOR_EVERY_LAYER {
            cold_layers
        } else {
            cold_layers.min(1)
        }
    }

    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Nothing held is valid any more (the recall slots were emptied or replaced).
    pub fn forget(&mut self) {
        self.held.fill(Held::Nothing);
    }

    fn set(&self, layer: usize) -> Option<usize> {
        self.set_of.get(layer).copied().flatten()
    }

    /// Layer `layer`'s recalled rows per kv head, and how attention reads them.
    pub fn for_layer(&self, layer: usize) -> (usize, RecalledFor<'_>) {
        let Some(set) = self.set(layer) else { return (0, RecalledFor::None) };
        match self.held[set] {
            Held::Rows { layer: l, rows } if l == layer && rows > 0 => (rows, RecalledFor::Rows(self)),
            Held::Blocks { layer: l, rows } if l == layer && rows > 0 => (rows, RecalledFor::Blocks),
            _ => (0, RecalledFor::None),
        }
    }

    /// Kv head `g`'s first `rows` keys and values of layer `layer` (after [`fill`](Self::fill)).
    pub fn head(&self, layer: usize, g: usize, rows: usize) -> (&[f32], &[f32]) {
        let base = (self.set(layer).unwrap_or(0) * self.n_kv + g) * self.per_head;
        let span = base * self.head_dim..(base + rows) * self.head_dim;
        (&self.k[span.clone()], &self.v[span])
    }

    /// Makes layer `layer`'s recalled keys ready for the tokens that share its
    /// recall (`tokens`): read block by block in a one-token step's attention
    /// natively, else rows (see the module documentation). `changed`: the
    /// `(kv head, slot)` pairs the recall loaded.
    pub fn prepare(&mut self, layer: usize, cold: &ColdLayer, rope: &RecallRope, round_f16: bool, changed: &[(usize, usize)], tokens: usize) {
        let Some(set) = self.set(layer) else { return };
        if tokens == 1 && !ROWS_FOR_EVERY_LAYER {
            cold.prefetch_held();
            self.held[set] = Held::Blocks { layer, rows: cold.filled() * BLOCK };
        } else {
            self.fill(layer, cold, rope, round_f16, changed);
        }
    }

    /// Dequantizes the blocks `cold`'s recall slots hold as layer `layer`'s
    /// rows. When the rows already hold that layer (the next tokens of a
    /// prefill chunk), only the slots in `changed` (`(kv head, slot)`, the
    /// recall's loads) are dequantized.
    fn fill(&mut self, layer: usize, cold: &ColdLayer, rope: &RecallRope, round_f16: bool, changed: &[(usize, usize)]) {
        let Some(set) = self.set(layer) else { return };
        let (hd, filled) = (self.head_dim, cold.filled());
        let partial = matches!(self.held[set], Held::Rows { layer: l, .. } if l == layer);
        for g in 0..self.n_kv {
            let mut blocks = HeldBlocks::new(cold, g, rope, round_f16, &mut self.scratch);
            let base = (set * self.n_kv + g) * self.per_head;
            for slot in 0..filled {
                if partial && !changed.contains(&(g, slot)) {
                    continue;
                }
                let at = (base + slot * BLOCK) * hd..(base + (slot + 1) * BLOCK) * hd;
                blocks.keys(slot, &mut self.k[at.clone()]);
                blocks.values(slot, &mut self.v[at]);
            }
        }
        self.held[set] = Held::Rows { layer, rows: filled * BLOCK };
    }
}

/// Kv head `g`'s recalled blocks of one layer, dequantized on demand (the
/// tiles of [`RecalledBlocks`], or the rows of a fill).
pub struct HeldBlocks<'a> {
    cold: &'a ColdLayer,
    g: usize,
    ids: &'a [Option<usize>],
    rope: &'a RecallRope<'a>,
    round_f16: bool,
    scratch: &'a mut DequantScratch,
}

impl<'a> HeldBlocks<'a> {
    pub fn new(cold: &'a ColdLayer, g: usize, rope: &'a RecallRope<'a>, round_f16: bool, scratch: &'a mut DequantScratch) -> Self {
        let ids = &cold.slots_of(g)[..cold.filled()];
        Self { cold, g, ids, rope, round_f16, scratch }
    }

    /// Starts loading the block after `i`: its codes come from memory (4.6 KB at
    /// 8 bits), too short a run for the hardware prefetcher to find.
    #[inline(always)]
    fn prefetch_after(&self, i: usize) {
        if let Some(Some(id)) = self.ids.get(i + 1) {
            self.cold.block(self.g, *id).prefetch(CacheLevel::First);
        }
    }

    /// Block `i`'s keys (rotated) or values into `tile` (zeros for a slot
    /// that holds nothing, which a filled slot never is).
    #[inline(always)]
    fn make(&mut self, part: Part, i: usize, tile: &mut [f32]) {
        let hd = self.cold.head_dim();
        let tile = &mut tile[..BLOCK * hd];
        let Some(Some(id)) = self.ids.get(i) else { return tile.fill(0.0) };
        self.prefetch_after(i);
        let block = self.cold.block(self.g, *id);
        match part {
            Part::Keys => {
                block.keys(hd, self.scratch, tile);
                let half = hd / 2;
                for (r, key) in tile.chunks_exact_mut(hd).enumerate() {
                    let row = (i * BLOCK + r) * half..(i * BLOCK + r + 1) * half;
                    self.rope.rotate.rotate(key, &self.rope.cos[row.clone()], &self.rope.sin[row]);
                }
            }
            Part::Values => block.values(hd, self.scratch, tile),
        }
        if self.round_f16 {
            // What storing them in an f16 cache and reading them back gives.
            ops::round_f16(tile);
        }
    }

    /// [`make`](Self::make) compiled for AVX-512, its loops sixteen lanes wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn make_avx512(&mut self, part: Part, i: usize, tile: &mut [f32]) {
        self.make(part, i, tile)
    }

    /// [`make`](Self::make) compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn make_avx2(&mut self, part: Part, i: usize, tile: &mut [f32]) {
        self.make(part, i, tile)
    }

    /// [`make`](Self::make) with the widest vectors this CPU has.
    fn make_widest(&mut self, part: Part, i: usize, tile: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match x86_width() {
            // SAFETY: the CPU has the features each one is compiled with.
            2 => return unsafe { self.make_avx512(part, i, tile) },
            1 => return unsafe { self.make_avx2(part, i, tile) },
            _ => {}
        }
        self.make(part, i, tile)
    }
}

/// What [`HeldBlocks::make`] dequantizes.
#[derive(Clone, Copy)]
enum Part {
    Keys,
    Values,
}

/// The widest vectors this CPU has for the dequantizing loops.
#[cfg(target_arch = "x86_64")]
fn x86_width() -> u8 {
    static WIDTH: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| if std::is_x86_feature_detected!("avx512bw") { 2 } else if std::is_x86_feature_detected!("avx2") { 1 } else { 0 })
}

impl RecalledBlocks for HeldBlocks<'_> {
    fn block_rows(&self) -> usize {
        BLOCK
    }

    fn blocks(&self) -> usize {
        self.ids.len()
    }

    fn keys(&mut self, i: usize, tile: &mut [f32]) {
        self.make_widest(Part::Keys, i, tile)
    }

    fn values(&mut self, i: usize, tile: &mut [f32]) {
        self.make_widest(Part::Values, i, tile)
    }
}
