//! The keys and values recalled from the cold tier: the blocks held in a
//! layer's recall slots, their keys dequantized, rotated at the slots'
//! in-cache positions (`sinks + row`) and kept as bf16 rows (half the bytes
//! of f32 ones; see `attention::bf16_keys`), their values kept as one-byte
//! codes with each row's min and step (attention dequantizes a value as it
//! reads it: values are not rotated, so their codes serve as they are), kept
//! for every layer with a cold tier and refilled only where a recall loaded a
//! new block (on the 3,715-token pass-key text a decode step loads 31 blocks
//! over 90 layer and kv-head pairs).
//!
//! Decode at long context waits on memory, so bytes are time: values as codes
//! are 3.3 MB a step instead of 11.8 MB of f32 rows for SmolLM2 at recall 512,
//! and a cold decode token at 3.7k tokens went from 0.73x to 0.78x the plain
//! window's natively (three alternated rounds of `kvchat bench --gen 192`),
//! 0.68x to 0.72x in Chromium. Keys cannot be scored from their codes: each
//! row has its own rotation (see ARCHITECTURE.md); as bf16 they are 5.9 MB a
//! step instead of 11.8.
//!
//! Natively the blocks were once dequantized inside attention instead, a
//! block at a time into a tile that stayed in the first-level cache, every
//! step: rows for every layer decoded 7% faster than the tiles, as the
//! remaking of 1,440 blocks a step (11% of decode) cost more than reading
//! the rows. In wasm, with 128-bit vectors, rows always won (headless
//! Chromium, 3.7k tokens, per decode token: attention 7.7 ms with tiles
//! against 2.2 for the plain window).

use super::cold::{ColdLayer, BLOCK};
use super::cold_block::DequantScratch;
use crate::backend::cpu::attention::{bf16_keys, Bf16Keys, ValueCodes};
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
    /// `[sets][n_kv][per_head][head_dim / 2]` words of bf16 keys in the run layout.
    k: Vec<u32>,
    /// One block's keys as f32, before they are rounded into `k`.
    block_keys: Vec<f32>,
    /// `[sets][n_kv][per_head][head_dim]` value codes, one a byte (attention
    /// dequantizes them as it reads them: a quarter of f32 rows' bytes).
    v_codes: Vec<u8>,
    /// `[sets][n_kv][per_head][min, step]`.
    v_params: Vec<f32>,
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
        let (rows, n) = (sets * n_kv * per_head, sets * n_kv * per_head * head_dim);
        let (k, v_codes, v_params) = (vec![0; n / 2], vec![0; n], vec![0.0; 2 * rows]);
        let block_keys = vec![0.0; BLOCK * head_dim];
        Self { set_of, held: vec![Held::Nothing; sets], n_kv, per_head, head_dim, k, block_keys, v_codes, v_params, scratch: DequantScratch::default() }
    }

    pub fn bytes(&self) -> usize {
        (self.v_params.len() + self.block_keys.len()) * std::mem::size_of::<f32>() + self.k.len() * std::mem::size_of::<u32>() + self.v_codes.len()
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
    pub fn head(&self, layer: usize, g: usize, rows: usize) -> (Bf16Keys<'_>, ValueCodes<'_>) {
        let base = (self.set(layer).unwrap_or(0) * self.n_kv + g) * self.per_head;
        let span = base * self.head_dim..(base + rows) * self.head_dim;
        let values = ValueCodes { codes: &self.v_codes[span.clone()], params: &self.v_params[2 * base..2 * (base + rows)] };
        (Bf16Keys { words: &self.k[span.start / 2..span.end / 2] }, values)
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
                let (first, end) = (base + slot * BLOCK, base + (slot + 1) * BLOCK);
                blocks.keys_widest(slot, &mut self.block_keys, &mut self.k[first * hd / 2..end * hd / 2]);
                blocks.value_codes(slot, &mut self.v_codes[first * hd..end * hd], &mut self.v_params[2 * first..2 * end]);
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

    /// Block `i`'s keys, rotated in `rows` and rounded into `packed` as bf16
    /// rows (zeros for a slot that holds nothing, which a filled slot never
    /// is); with an f16 cache rounded to f16 first, as the window's keys are.
    #[inline(always)]
    fn keys(&mut self, i: usize, rows: &mut [f32], packed: &mut [u32]) {
        let hd = self.cold.head_dim();
        let rows = &mut rows[..BLOCK * hd];
        let Some(Some(id)) = self.ids.get(i) else { return packed.fill(0) };
        self.prefetch_after(i);
        self.cold.block(self.g, *id).keys(hd, self.scratch, rows);
        let half = hd / 2;
        for (r, key) in rows.chunks_exact_mut(hd).enumerate() {
            let row = (i * BLOCK + r) * half..(i * BLOCK + r + 1) * half;
            self.rope.rotate.rotate(key, &self.rope.cos[row.clone()], &self.rope.sin[row]);
        }
        if self.round_f16 {
            // What storing them in an f16 cache and reading them back gives.
            ops::round_f16(rows);
        }
        bf16_keys::pack_rows(rows, hd, packed);
    }

    /// Block `i`'s value codes and their `[min, step]` (zeros for a slot that
    /// holds nothing). Unlike the keys they are never rounded to f16: they
    /// are read as codes, never stored in the cache.
    fn value_codes(&self, i: usize, codes: &mut [u8], params: &mut [f32]) {
        let Some(Some(id)) = self.ids.get(i) else {
            codes.fill(0);
            return params.fill(0.0);
        };
        self.cold.block(self.g, *id).value_codes(self.cold.head_dim(), codes, params);
    }

    /// [`keys`](Self::keys) compiled for AVX-512, its loops sixteen lanes wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn keys_avx512(&mut self, i: usize, rows: &mut [f32], packed: &mut [u32]) {
        self.keys(i, rows, packed)
    }

    /// [`keys`](Self::keys) compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn keys_avx2(&mut self, i: usize, rows: &mut [f32], packed: &mut [u32]) {
        self.keys(i, rows, packed)
    }

    /// [`keys`](Self::keys) with the widest vectors this CPU has.
    fn keys_widest(&mut self, i: usize, rows: &mut [f32], packed: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        match x86_width() {
            // SAFETY: the CPU has the features each one is compiled with.
            2 => return unsafe { self.keys_avx512(i, rows, packed) },
            1 => return unsafe { self.keys_avx2(i, rows, packed) },
            _ => {}
        }
        self.keys(i, rows, packed)
    }
}

/// The widest vectors this CPU has for the dequantizing loops.
#[cfg(target_arch = "x86_64")]
fn x86_width() -> u8 {
    static WIDTH: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| if std::is_x86_feature_detected!("avx512bw") { 2 } else if std::is_x86_feature_detected!("avx2") { 1 } else { 0 })
}
