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

/// Per-block buffers of [`StoredBlock::keys`], reused.
#[derive(Default)]
pub struct DequantScratch {
    key_steps: Vec<f32>,
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
    #[cfg(test)]
    pub fn dequantize(&self, hd: usize, scratch: &mut DequantScratch, k: &mut [f32], v: &mut [f32]) {
        self.keys(hd, scratch, k);
        self.values(hd, v);
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
                    *x = self.k_lo[i % hd] + code(self.k_codes, ColdBits::Four, hd, i) as f32 * steps[i % hd];
                }
            }
            ColdBits::Four => {
                // Byte `c` of a row: channel `c` in the low nibble, channel `c + hd/2` in the high one.
                let half = hd / 2;
                let (lo_first, lo_second) = self.k_lo.split_at(half);
                let (step_first, step_second) = steps.split_at(half);
                for (row, codes) in k.chunks_exact_mut(hd).zip(self.k_codes.chunks_exact(half)) {
                    let (first, second) = row.split_at_mut(half);
                    for (((x, &c), &lo), &step) in first.iter_mut().zip(codes).zip(lo_first).zip(step_first) {
                        *x = lo + (c & 15) as f32 * step;
                    }
                    for (((x, &c), &lo), &step) in second.iter_mut().zip(codes).zip(lo_second).zip(step_second) {
                        *x = lo + (c >> 4) as f32 * step;
                    }
                }
            }
        }
    }

    /// The block's value codes one a byte, `[BLOCK][head_dim]` (4-bit ones
    /// unpacked), and each token's `[min, step]` as f32: value `min + code · step`.
    #[inline(always)]
    pub fn value_codes(&self, hd: usize, codes: &mut [u8], params: &mut [f32]) {
        crate::backend::cpu::ops::f16_to_f32_slice(self.v_params, &mut params[..2 * BLOCK], false);
        let codes = &mut codes[..BLOCK * hd];
        match self.bits {
            ColdBits::Eight => codes.copy_from_slice(&self.v_codes[..BLOCK * hd]),
            ColdBits::Four if hd % 2 == 1 => {
                for (i, x) in codes.iter_mut().enumerate() {
                    *x = code(self.v_codes, ColdBits::Four, hd, i);
                }
            }
            ColdBits::Four => {
                let half = hd / 2;
                for (row, packed) in codes.chunks_exact_mut(hd).zip(self.v_codes.chunks_exact(half)) {
                    let (first, second) = row.split_at_mut(half);
                    for ((low, high), &c) in first.iter_mut().zip(second.iter_mut()).zip(packed) {
                        (*low, *high) = (c & 15, c >> 4);
                    }
                }
            }
        }
    }

    /// The block's values, `[BLOCK][head_dim]`: [`value_codes`](Self::value_codes) dequantized.
    #[cfg(test)]
    pub fn values(&self, hd: usize, v: &mut [f32]) {
        let (mut codes, mut params) = (vec![0u8; BLOCK * hd], vec![0f32; 2 * BLOCK]);
        self.value_codes(hd, &mut codes, &mut params);
        for ((row, codes), p) in v[..BLOCK * hd].chunks_exact_mut(hd).zip(codes.chunks_exact(hd)).zip(params.chunks_exact(2)) {
            for (x, &c) in row.iter_mut().zip(codes) {
                *x = p[0] + c as f32 * p[1];
            }
        }
    }
}


/// Where code `i` (token `i / hd`, channel `i % hd`) of a token-major block
/// of 4-bit codes lives: `(byte, shift)`. A row's byte `c` holds channel `c`
/// in its low nibble and channel `c + hd/2` in its high one, so that each
/// half of a row is read with one contiguous run of bytes (loops that
/// vectorize: 4-bit decode dequantized two interleaved nibbles before, at
/// 0.75x the speed of 8 bits); an odd head size packs the codes in order.
#[inline(always)]
fn nibble(hd: usize, i: usize) -> (usize, u32) {
    if hd % 2 == 1 {
        return (i / 2, 4 * (i % 2) as u32);
    }
    let (t, c, half) = (i / hd, i % hd, hd / 2);
    (t * half + c % half, 4 * (c / half) as u32)
}

/// Code `i` of a token-major block of head size `hd`.
#[inline(always)]
fn code(codes: &[u8], bits: ColdBits, hd: usize, i: usize) -> u8 {
    match bits {
        ColdBits::Eight => codes[i],
        ColdBits::Four => {
            let (byte, shift) = nibble(hd, i);
            (codes[byte] >> shift) & 15
        }
    }
}

#[inline(always)]
fn set_code(codes: &mut [u8], bits: ColdBits, hd: usize, i: usize, c: u8) {
    match bits {
        ColdBits::Eight => codes[i] = c,
        ColdBits::Four => {
            let (byte, shift) = nibble(hd, i);
            codes[byte] = (codes[byte] & !(15 << shift)) | (c << shift);
        }
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
    for c in 0..hd {
        // A channel's step and its inverse once, not once per token (two divisions each).
        let step = (hi[c] - lo[c]) / levels as f32;
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        for (t, row) in rows.chunks_exact(stride).enumerate() {
            set_code(codes, bits, hd, t * hd + c, quantize(row[offset + c], lo[c], inv, levels));
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
            set_code(codes, bits, hd, t * hd + c, quantize(v, min, inv, levels));
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// Every head size, odd ones included, reads back each code where it was
    /// written: within half a step of the value, at 4 bits and at 8.
    #[test]
    fn codes_come_back_at_every_head_size() {
        for bits in [ColdBits::Four, ColdBits::Eight] {
            for hd in [15, 16, 64] {
                let value = |t: usize, c: usize| ((t * 13 + c * 7) % 17) as f32 / 8.0 - 1.0 + c as f32 * 0.01;
                let rows: Vec<f32> = (0..BLOCK * hd).map(|i| value(i / hd, i % hd)).collect();
                let code_bytes = bits.bytes(BLOCK * hd + hd % 2);
                let (mut range, mut k_codes, mut v_codes) = (vec![0.0; 2 * hd], vec![0; code_bytes], vec![0; code_bytes]);
                let mut v_params = vec![f16::ZERO; 2 * BLOCK];
                quantize_keys(&rows, hd, 0, hd, bits, &mut range, &mut k_codes);
                quantize_values(&rows, hd, 0, hd, bits, &mut v_params, &mut v_codes);
                let (k_lo, k_hi) = range.split_at(hd);
                let block = StoredBlock { bits, k_codes: &k_codes, k_lo, k_hi, v_codes: &v_codes, v_params: &v_params };
                let (mut k, mut v) = (vec![0.0; BLOCK * hd], vec![0.0; BLOCK * hd]);
                block.dequantize(hd, &mut DequantScratch::default(), &mut k, &mut v);
                // Ranges: a channel spans 2, a token at most 2.63 (f16 parameters round a little).
                let step = 2.7 / bits.levels() as f32;
                for (i, &x) in rows.iter().enumerate() {
                    assert!((k[i] - x).abs() <= step * 0.51, "{bits:?} hd {hd} key {i}: {} vs {x}", k[i]);
                    assert!((v[i] - x).abs() <= step * 0.51, "{bits:?} hd {hd} value {i}: {} vs {x}", v[i]);
                }
            }
        }
    }
}
