//! One cold block's codes: a kv head's keys and values of [`BLOCK`] tokens
//! quantized as KIVI splits them (keys per channel against each channel's
//! min and max over the block, values per token with an f16 min and step),
//! and read back ([`StoredBlock`]) with loops that vectorize.

use super::cold::{ColdBits, BLOCK};
use crate::backend::cpu::ops::{prefetch, CacheLevel};
use half::f16;

/// One stored block of one kv head: codes, key ranges, value parameters.
pub struct StoredBlock<'a> {
    pub(super) bits: ColdBits,
    pub(super) k_codes: &'a [u8],
    pub(super) k_lo: &'a [f32],
    pub(super) k_hi: &'a [f32],
    pub(super) v_codes: &'a [u8],
    pub(super) v_params: &'a [f16],
}

/// Per-block buffers of [`StoredBlock::dequantize`], reused.
#[derive(Default)]
pub struct DequantScratch {
    key_steps: Vec<f32>,
    value_params: Vec<f32>,
}

impl StoredBlock<'_> {
    /// Starts bringing the block into the CPU's cache `level` (see [`prefetch`]).
    #[inline(always)]
    pub fn prefetch(&self, level: CacheLevel) {
        prefetch(self.k_codes, level);
        prefetch(self.v_codes, level);
        prefetch(self.k_lo, level);
        prefetch(self.k_hi, level);
        prefetch(self.v_params, level);
    }

    /// The block's keys (un-rotated) and values, `[BLOCK][head_dim]` each:
    /// `min + code · step` (a key's min and step per channel, a value's per
    /// token), loops written so they vectorize (inlined into the caller's
    /// instruction set).
    #[inline(always)]
    pub fn dequantize(&self, hd: usize, scratch: &mut DequantScratch, k: &mut [f32], v: &mut [f32]) {
        self.keys(hd, scratch, k);
        self.values(hd, scratch, v);
    }

    /// The block's keys, un-rotated: `[BLOCK][head_dim]`.
    #[inline(always)]
    pub fn keys(&self, hd: usize, scratch: &mut DequantScratch, k: &mut [f32]) {
        let levels = self.bits.levels() as f32;
        let steps = &mut scratch.key_steps;
        steps.clear();
        steps.extend(self.k_lo.iter().zip(self.k_hi).map(|(l, h)| (h - l) / levels));
        let k = &mut k[..BLOCK * hd];
        match self.bits {
            ColdBits::Eight => {
                for (row, codes) in k.chunks_exact_mut(hd).zip(self.k_codes.chunks_exact(hd)) {
                    for (((x, &c), &lo), &step) in row.iter_mut().zip(codes).zip(self.k_lo).zip(steps.iter()) {
                        *x = lo + c as f32 * step;
                    }
                }
            }
            // Rows that start mid-byte (no model has an odd head size; kept exact anyway).
            ColdBits::Four if hd % 2 == 1 => {
                for (i, x) in k.iter_mut().enumerate() {
                    *x = self.k_lo[i % hd] + code(self.k_codes, ColdBits::Four, i) as f32 * steps[i % hd];
                }
            }
            ColdBits::Four => {
                // Two channels a byte, the even one in the low nibble.
                for (row, codes) in k.chunks_exact_mut(hd).zip(self.k_codes.chunks_exact(hd / 2)) {
                    for (i, &c) in codes.iter().enumerate() {
                        row[2 * i] = self.k_lo[2 * i] + (c & 15) as f32 * steps[2 * i];
                        row[2 * i + 1] = self.k_lo[2 * i + 1] + (c >> 4) as f32 * steps[2 * i + 1];
                    }
                }
            }
        }
    }

    /// The block's values: `[BLOCK][head_dim]`.
    #[inline(always)]
    pub fn values(&self, hd: usize, scratch: &mut DequantScratch, v: &mut [f32]) {
        let params = &mut scratch.value_params;
        params.resize(2 * BLOCK, 0.0);
        crate::backend::cpu::ops::f16_to_f32_slice(self.v_params, params, false);
        let v = &mut v[..BLOCK * hd];
        match self.bits {
            ColdBits::Eight => {
                for ((row, codes), p) in v.chunks_exact_mut(hd).zip(self.v_codes.chunks_exact(hd)).zip(params.chunks_exact(2)) {
                    let (min, step) = (p[0], p[1]);
                    for (x, &c) in row.iter_mut().zip(codes) {
                        *x = min + c as f32 * step;
                    }
                }
            }
            ColdBits::Four if hd % 2 == 1 => {
                for (i, x) in v.iter_mut().enumerate() {
                    let (min, step) = (params[2 * (i / hd)], params[2 * (i / hd) + 1]);
                    *x = min + code(self.v_codes, ColdBits::Four, i) as f32 * step;
                }
            }
            ColdBits::Four => {
                for ((row, codes), p) in v.chunks_exact_mut(hd).zip(self.v_codes.chunks_exact(hd / 2)).zip(params.chunks_exact(2)) {
                    let (min, step) = (p[0], p[1]);
                    for (i, &c) in codes.iter().enumerate() {
                        row[2 * i] = min + (c & 15) as f32 * step;
                        row[2 * i + 1] = min + (c >> 4) as f32 * step;
                    }
                }
            }
        }
    }
}


/// Code `i` of a token-major block (4 bits: even indices in the low nibble).
#[inline(always)]
fn code(codes: &[u8], bits: ColdBits, i: usize) -> u8 {
    match bits {
        ColdBits::Eight => codes[i],
        ColdBits::Four => (codes[i / 2] >> (4 * (i % 2))) & 15,
    }
}

#[inline(always)]
fn set_code(codes: &mut [u8], bits: ColdBits, i: usize, c: u8) {
    match bits {
        ColdBits::Eight => codes[i] = c,
        ColdBits::Four => codes[i / 2] = (codes[i / 2] & !(15 << (4 * (i % 2)))) | (c << (4 * (i % 2))),
    }
}

/// `x` quantized against `min` with `1 / step` (round half up; NaN → 0).
#[inline(always)]
fn quantize(x: f32, min: f32, inv_step: f32, levels: i32) -> u8 {
    (((x - min) * inv_step + 0.5) as i32).clamp(0, levels) as u8
}

/// One kv head's keys of a block, per channel: rows of `stride` values, the
/// head's channels from `offset`.
pub(super) fn quantize_keys(rows: &[f32], stride: usize, offset: usize, hd: usize, bits: ColdBits, range: &mut [f32], codes: &mut [u8]) {
    let levels = bits.levels();
    let (lo, hi) = range.split_at_mut(hd);
    for c in 0..hd {
        let column = rows.chunks_exact(stride).map(|r| r[offset + c]);
        lo[c] = column.clone().fold(f32::INFINITY, |a, b| if b < a { b } else { a });
        hi[c] = column.fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    }
    for (t, row) in rows.chunks_exact(stride).enumerate() {
        for c in 0..hd {
            let step = (hi[c] - lo[c]) / levels as f32;
            let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
            set_code(codes, bits, t * hd + c, quantize(row[offset + c], lo[c], inv, levels));
        }
    }
}

/// One kv head's values of a block, per token: min and step in f16.
pub(super) fn quantize_values(rows: &[f32], stride: usize, offset: usize, hd: usize, bits: ColdBits, params: &mut [f16], codes: &mut [u8]) {
    let levels = bits.levels();
    for (t, row) in rows.chunks_exact(stride).enumerate() {
        let x = &row[offset..offset + hd];
        let lo = x.iter().fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
        let hi = x.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        let min = f16::from_f32(lo.clamp(-65504.0, 65504.0));
        let step = f16::from_f32(((hi - min.to_f32()) / levels as f32).clamp(0.0, 65504.0));
        params[2 * t] = min;
        params[2 * t + 1] = step;
        let (min, step) = (min.to_f32(), step.to_f32());
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        for (c, &v) in x.iter().enumerate() {
            set_code(codes, bits, t * hd + c, quantize(v, min, inv, levels));
        }
    }
}

