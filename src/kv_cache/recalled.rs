//! The keys and values recalled from the cold tier: the blocks held in a
//! layer's recall slots dequantized into rows, their keys rotated at the
//! slots' in-cache positions (`sinks + row`), kept for every layer with a
//! cold tier and refilled only where a recall loaded a new block (on the
//! 3,715-token pass-key text a decode step loads 31 blocks over 90 layer and
//! kv-head pairs). Attention reads them like the window's rows.
//!
//! Natively the blocks were once dequantized inside attention instead, a
//! block at a time into a tile that stayed in the first-level cache (the
//! codes are a quarter of the f32 rows' bytes), every step: at 3.7k tokens
//! rows for every layer now decode 7% faster than the tiles (four
//! alternated rounds of `kvchat bench --gen 192`: 174–186 against 162–172
//! tok/s), as the remaking of 1,440 blocks a step (11% of decode) cost more
//! than reading 23.6 MB of rows. In wasm, with 128-bit vectors, rows always
//! won (headless Chromium, 3.7k tokens, per decode token: attention 7.7 ms
//! with tiles against 2.2 for the plain window).

use super::cold::{ColdLayer, BLOCK};
use super::cold_block::DequantScratch;
use crate::backend::cpu::ops::{self, CacheLevel, RopeStyle};

/// Where recalled keys go: the layer's RoPE and the angles of the recall
/// rows' in-cache positions (`sinks + row`), `recall_rows × head_dim / 2` each.
pub struct RecallRope<'a> {
    pub rotate: RopeStyle,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// What one layer's recalled rows hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Nothing,
    /// `rows` recalled rows per kv head, dequantized.
    Rows(usize),
}

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
    /// Rows for the layers with a cold tier (`cold[layer]`), one set each.
    pub fn new(cold: &[bool], n_kv: usize, per_head: usize, head_dim: usize) -> Self {
        let mut sets = 0;
        let set_of = cold
            .iter()
            .map(|&c| {
                let set = c.then_some(sets);
                sets += c as usize;
                set
            })
            .collect();
        let n = sets * n_kv * per_head * head_dim;
        Self { set_of, held: vec![Held::Nothing; sets], n_kv, per_head, head_dim, k: vec![0.0; n], v: vec![0.0; n], scratch: DequantScratch::default() }
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

    /// Layer `layer`'s recalled rows per kv head (0: none).
    pub fn rows(&self, layer: usize) -> usize {
        match self.set(layer).map(|set| self.held[set]) {
            Some(Held::Rows(rows)) => rows,
            _ => 0,
        }
    }

    /// Kv head `g`'s first `rows` keys and values of layer `layer`.
    pub fn head(&self, layer: usize, g: usize, rows: usize) -> (&[f32], &[f32]) {
        let base = (self.set(layer).unwrap_or(0) * self.n_kv + g) * self.per_head;
        let span = base * self.head_dim..(base + rows) * self.head_dim;
        (&self.k[span.clone()], &self.v[span])
    }

    /// Dequantizes the blocks `cold`'s recall slots hold as layer `layer`'s
    /// rows: only the slots in `changed` (`(kv head, slot)`, the recall's
    /// loads) when the rows are current but for those.
    pub fn fill(&mut self, layer: usize, cold: &ColdLayer, rope: &RecallRope, round_f16: bool, changed: &[(usize, usize)]) {
        let Some(set) = self.set(layer) else { return };
        let (hd, filled) = (self.head_dim, cold.filled());
        let partial = self.held[set] != Held::Nothing;
        for g in 0..self.n_kv {
            let mut blocks = HeldBlocks::new(cold, g, rope, round_f16, &mut self.scratch);
            let base = (set * self.n_kv + g) * self.per_head;
            for slot in 0..filled {
                if partial && !changed.contains(&(g, slot)) {
                    continue;
                }
                let at = (base + slot * BLOCK) * hd..(base + (slot + 1) * BLOCK) * hd;
                blocks.make_widest(Part::Keys, slot, &mut self.k[at.clone()]);
                blocks.make_widest(Part::Values, slot, &mut self.v[at]);
            }
        }
        self.held[set] = Held::Rows(filled * BLOCK);
    }
}

/// Kv head `g`'s recalled blocks of one layer, dequantized on demand.
struct HeldBlocks<'a> {
    cold: &'a ColdLayer,
    g: usize,
    ids: &'a [Option<usize>],
    rope: &'a RecallRope<'a>,
    round_f16: bool,
    scratch: &'a mut DequantScratch,
}

impl<'a> HeldBlocks<'a> {
    fn new(cold: &'a ColdLayer, g: usize, rope: &'a RecallRope<'a>, round_f16: bool, scratch: &'a mut DequantScratch) -> Self {
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

    /// Block `i`'s keys (rotated) or values into `rows` (zeros for a slot
    /// that holds nothing, which a filled slot never is).
    #[inline(always)]
    fn make(&mut self, part: Part, i: usize, rows: &mut [f32]) {
        let hd = self.cold.head_dim();
        let rows = &mut rows[..BLOCK * hd];
        let Some(Some(id)) = self.ids.get(i) else { return rows.fill(0.0) };
        self.prefetch_after(i);
        let block = self.cold.block(self.g, *id);
        match part {
            Part::Keys => {
                block.keys(hd, self.scratch, rows);
                let half = hd / 2;
                for (r, key) in rows.chunks_exact_mut(hd).enumerate() {
                    let row = (i * BLOCK + r) * half..(i * BLOCK + r + 1) * half;
                    self.rope.rotate.rotate(key, &self.rope.cos[row.clone()], &self.rope.sin[row]);
                }
            }
            Part::Values => block.values(hd, self.scratch, rows),
        }
        if self.round_f16 {
            // What storing them in an f16 cache and reading them back gives.
            ops::round_f16(rows);
        }
    }

    /// [`make`](Self::make) compiled for AVX-512, its loops sixteen lanes wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn make_avx512(&mut self, part: Part, i: usize, rows: &mut [f32]) {
        self.make(part, i, rows)
    }

    /// [`make`](Self::make) compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn make_avx2(&mut self, part: Part, i: usize, rows: &mut [f32]) {
        self.make(part, i, rows)
    }

    /// [`make`](Self::make) with the widest vectors this CPU has.
    fn make_widest(&mut self, part: Part, i: usize, rows: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match x86_width() {
            // SAFETY: the CPU has the features each one is compiled with.
            2 => return unsafe { self.make_avx512(part, i, rows) },
            1 => return unsafe { self.make_avx2(part, i, rows) },
            _ => {}
        }
        self.make(part, i, rows)
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
