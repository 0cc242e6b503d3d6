//! [`QActivations`]: the activations of a matmul quantized to Q8 once, the
//! buffers every kernel reads, and the dispatch to this target's quantizer
//! (`portable::quantize`, the reference, or the `quantize` of `avx2.rs` /
//! `simd128.rs`: the same operations, the same bytes).

use super::{portable, QK};
use half::f16;

/// Activations quantized to Q8 once per matmul: the bytes (and, in wasm,
/// the same values widened to i16), the scales as stored in f16, Q8_1's
/// `s = d * Σq` rounded to f16 (what Q4_1 uses, as llama.cpp does) and the
/// exact `d * Σq` (what Q4_0's offset uses).
#[derive(Debug, Default, Clone)]
pub struct QActivations {
    pub(super) cols: usize,
    pub(super) d: Vec<f32>,
    pub(super) s: Vec<f32>,
    pub(super) sx: Vec<f32>,
    /// `Σq` per block (the AVX-512 Q8 kernel's correction for its offset weights).
    pub(super) qsum: Vec<i32>,
    pub(super) q: Vec<i8>,
    pub(super) q16: Vec<i16>,
    /// `d`, `s`, `sx` transposed to `[block][row]` (wasm prefill reads four rows' scales at once).
    pub(super) dt: Vec<f32>,
    pub(super) st: Vec<f32>,
    pub(super) sxt: Vec<f32>,
}

impl QActivations {
    /// The last quantized activations: bytes, scales `d` (f16-rounded), `s`
    /// (f16-rounded `d * Σq`) and `sx` (`Σq * d`), one of each per block.
    pub fn quantized(&self) -> (&[i8], &[f32], &[f32], &[f32]) {
        (&self.q, &self.d, &self.s, &self.sx)
    }

    /// Quantizes `t_rows` rows of `cols` (what every matmul does first), with
    /// this target's SIMD where it has some: the bytes and scales of
    /// [`quantize_portable`](Self::quantize_portable).
    pub fn quantize(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2() {
            // SAFETY: the CPU has AVX2.
            unsafe { super::avx2::quantize(self, x, t_rows, cols) };
            return;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            super::simd128::quantize(self, x, t_rows, cols);
            self.widen(t_rows);
            return;
        }
        #[allow(unreachable_code)]
        portable::quantize(self, x, t_rows, cols);
    }

    /// Sizes the buffers for `t_rows` rows of `cols`; returns the blocks per row.
    pub(super) fn resize(&mut self, t_rows: usize, cols: usize) -> usize {
        let nb = cols / QK;
        self.cols = cols;
        self.d.resize(t_rows * nb, 0.0);
        self.s.resize(t_rows * nb, 0.0);
        self.sx.resize(t_rows * nb, 0.0);
        self.qsum.resize(t_rows * nb, 0);
        self.q.resize(t_rows * cols, 0);
        nb
    }

    /// Block `b`'s scales from its `d = amax / 127` and `Σq`.
    #[inline(always)]
    pub(super) fn set_scales(&mut self, b: usize, d: f32, sum: i32) {
        let dh = f16::from_f32(d).to_f32();
        self.d[b] = dh;
        self.s[b] = f16::from_f32(sum as f32 * d).to_f32();
        self.sx[b] = sum as f32 * dh;
        self.qsum[b] = sum;
    }

    /// The scalar quantization (the reference the SIMD ones are tested against):
    /// llama.cpp's `quantize_row_q8_0` / `_q8_1` rounding.
    pub fn quantize_portable(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        portable::quantize(self, x, t_rows, cols);
    }

    /// wasm: the bytes widened to i16 and the scales transposed (the simd128 kernels read them).
    pub(super) fn widen(&mut self, t_rows: usize) {
        let nb = self.cols / QK;
        if cfg!(target_arch = "wasm32") {
            self.q16.clear();
            self.q16.extend(self.q.iter().map(|&v| v as i16));
            for (src, dst) in [(&self.d, &mut self.dt), (&self.s, &mut self.st), (&self.sx, &mut self.sxt)] {
                dst.resize(t_rows * nb, 0.0);
                for t in 0..t_rows {
                    for b in 0..nb {
                        dst[b * t_rows + t] = src[t * nb + b];
                    }
                }
            }
        }
    }

    pub(super) fn row(&self, t: usize) -> QRow<'_> {
        let nb = self.cols / QK;
        let (bs, vs) = (t * nb..(t + 1) * nb, t * self.cols..(t + 1) * self.cols);
        QRow { d: &self.d[bs.clone()], s: &self.s[bs.clone()], sx: &self.sx[bs], q: &self.q[vs.clone()], q16: self.q16.get(vs).unwrap_or(&[]) }
    }
}

/// One token's row of [`QActivations`] (what the portable kernel reads).
#[derive(Clone, Copy)]
pub(super) struct QRow<'a> {
    pub(super) d: &'a [f32],
    pub(super) s: &'a [f32],
    pub(super) sx: &'a [f32],
    pub(super) q: &'a [i8],
    #[allow(dead_code)]
    pub(super) q16: &'a [i16],
}
