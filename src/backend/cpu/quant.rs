//! Quantized dot-product kernels for the weight types small GGUF models ship
//! (Q4_0, Q4_1, Q8_0), with the weights repacked at load into separate scale
//! and quant arrays, and the activations quantized once per matmul to Q8 with
//! exactly llama.cpp's rounding (`quantize_row_q8_0` / `quantize_row_q8_1`).
//!
//! The loops are written so LLVM vectorizes them (SSE/AVX natively, simd128 in wasm).

use half::f16;

pub const QK: usize = 32;

/// Weight formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QFormat {
    /// Bytes of one 32-value block in the GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4_0 => 18,
            QFormat::Q4_1 => 20,
            QFormat::Q8_0 => 34,
        }
    }
}

/// How the 32 four-bit values of a block sit in its 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Layout {
    /// As in the GGUF file: byte `j` holds values `j` (low nibble) and `j + 16`.
    Ggml,
    /// Eight little-endian u16 lanes; lane `l` holds values `l`, `l + 8`,
    /// `l + 16`, `l + 24` in its four nibbles, so a 16-byte load, a shift and
    /// a mask give eight consecutive values as i16 lanes (wasm simd128's
    /// `i32x4.dot_i16x8_s` then needs no widening of the weights).
    Lanes,
}

impl Q4Layout {
    /// The layout this target's fastest kernel reads.
    pub fn native() -> Self {
        if cfg!(target_arch = "wasm32") {
            Q4Layout::Lanes
        } else {
            Q4Layout::Ggml
        }
    }

    /// Value `j` (0..32) of a block's 16 bytes.
    #[inline(always)]
    fn get(self, q: &[u8], j: usize) -> u8 {
        match self {
            Q4Layout::Ggml => {
                if j < 16 {
                    q[j] & 0x0F
                } else {
                    q[j - 16] >> 4
                }
            }
            Q4Layout::Lanes => {
                let l = j % 8;
                let lane = q[2 * l] as u16 | (q[2 * l + 1] as u16) << 8;
                ((lane >> (4 * (j / 8))) & 0x0F) as u8
            }
        }
    }
}

/// A weight matrix `[rows, cols]` repacked from GGUF blocks.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    pub layout: Q4Layout,
    /// Per-block scale (f16 widened to f32).
    d: Vec<f32>,
    /// Per-block offset term: Q4_1's minimum, Q4_0's `-8 d` (values are stored
    /// unsigned 0..16 and the offset applied through the activations' sums).
    m: Vec<f32>,
    /// Q4: 16 bytes of nibbles per block in `layout`. Q8: 32 signed bytes per block.
    qs: Vec<u8>,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl QMatrix {
    /// Repacks raw GGUF block data for this target's kernels.
    /// `data.len()` must be `rows * cols / 32 * block_bytes`.
    pub fn from_blocks(format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        Self::from_blocks_with_layout(format, rows, cols, data, Q4Layout::native())
    }

    /// As [`from_blocks`](Self::from_blocks) with an explicit Q4 layout (tests compare them).
    pub fn from_blocks_with_layout(format: QFormat, rows: usize, cols: usize, data: &[u8], layout: Q4Layout) -> Option<Self> {
        if cols % QK != 0 {
            return None;
        }
        let nb = rows * cols / QK;
        let bb = format.block_bytes();
        if data.len() != nb * bb {
            return None;
        }
        let qlen = if format == QFormat::Q8_0 { 32 } else { 16 };
        let mut d = Vec::with_capacity(nb);
        let mut m = Vec::with_capacity(if format == QFormat::Q8_0 { 0 } else { nb });
        let mut qs = Vec::with_capacity(nb * qlen);
        for blk in data.chunks_exact(bb) {
            let scale = f16_at(blk, 0);
            d.push(scale);
            let nibbles = match format {
                QFormat::Q4_0 => {
                    m.push(-8.0 * scale);
                    &blk[2..18]
                }
                QFormat::Q4_1 => {
                    m.push(f16_at(blk, 2));
                    &blk[4..20]
                }
                QFormat::Q8_0 => {
                    qs.extend_from_slice(&blk[2..34]);
                    continue;
                }
            };
            match layout {
                Q4Layout::Ggml => qs.extend_from_slice(nibbles),
                Q4Layout::Lanes => {
                    let v = |j: usize| Q4Layout::Ggml.get(nibbles, j) as u16;
                    for l in 0..8 {
                        let lane = v(l) | v(l + 8) << 4 | v(l + 16) << 8 | v(l + 24) << 12;
                        qs.extend_from_slice(&lane.to_le_bytes());
                    }
                }
            }
        }
        Some(Self { format, rows, cols, layout, d, m, qs })
    }

    /// `out[t * rows + r] = dot(row r, x row t)` for `x` of `t_rows` rows of `cols`.
    pub fn matmul(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        debug_assert_eq!(x.len(), t_rows * self.cols);
        debug_assert_eq!(out.len(), t_rows * self.rows);
        act.quantize(x, t_rows, self.cols);
        #[cfg(target_arch = "x86_64")]
        {
            if self.layout == Q4Layout::Ggml && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { self.dots_avx2(t_rows, act, out) };
                return;
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            if self.layout == Q4Layout::Lanes {
                simd128::matmul(self, t_rows, act, out);
                return;
            }
        }
        #[allow(unreachable_code)]
        self.dots(t_rows, act, out);
    }

    /// The portable kernels (the reference the SIMD ones are tested against).
    pub fn matmul_portable(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        act.quantize(x, t_rows, self.cols);
        self.dots(t_rows, act, out);
    }

    /// AVX2 kernels, lane for lane the same arithmetic as ggml's x86 `vec_dot`s.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2(&self, t_rows: usize, act: &QActivations, out: &mut [f32]) {
        let nb = self.cols / QK;
        for r in 0..self.rows {
            let d = &self.d[r * nb..(r + 1) * nb];
            for t in 0..t_rows {
                let y = act.row(t);
                out[t * self.rows + r] = match self.format {
                    QFormat::Q4_0 => avx2::dot_q4_0(d, &self.qs[r * nb * 16..(r + 1) * nb * 16], &y),
                    QFormat::Q4_1 => avx2::dot_q4_1(d, &self.m[r * nb..(r + 1) * nb], &self.qs[r * nb * 16..(r + 1) * nb * 16], &y),
                    QFormat::Q8_0 => avx2::dot_q8_0(d, &self.qs[r * nb * 32..(r + 1) * nb * 32], &y),
                };
            }
        }
    }

    fn dots(&self, t_rows: usize, act: &QActivations, out: &mut [f32]) {
        let nb = self.cols / QK;
        for r in 0..self.rows {
            let d = &self.d[r * nb..(r + 1) * nb];
            for t in 0..t_rows {
                let y = act.row(t);
                out[t * self.rows + r] = match self.format {
                    QFormat::Q4_0 | QFormat::Q4_1 => {
                        dot_q4(d, &self.m[r * nb..(r + 1) * nb], &self.qs[r * nb * 16..(r + 1) * nb * 16], self.layout, self.format, y)
                    }
                    QFormat::Q8_0 => dot_q8_0(d, &self.qs[r * nb * 32..(r + 1) * nb * 32], y),
                };
            }
        }
    }

    /// Dequantizes row `r` into `out` (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        for b in 0..nb {
            let i = r * nb + b;
            let d = self.d[i];
            let o = &mut out[b * QK..(b + 1) * QK];
            match self.format {
                QFormat::Q8_0 => {
                    for j in 0..QK {
                        o[j] = self.qs[i * 32 + j] as i8 as f32 * d;
                    }
                }
                QFormat::Q4_0 | QFormat::Q4_1 => {
                    let q = &self.qs[i * 16..i * 16 + 16];
                    for (j, v) in o.iter_mut().enumerate() {
                        let n = self.layout.get(q, j);
                        *v = if self.format == QFormat::Q4_0 { (n as f32 - 8.0) * d } else { n as f32 * d + self.m[i] };
                    }
                }
            }
        }
    }
}

/// Activations quantized to Q8 once per matmul: the bytes (and, in wasm,
/// the same values widened to i16), the scales as stored in f16, Q8_1's
/// `s = d * Σq` rounded to f16 (what Q4_1 uses, as llama.cpp does) and the
/// exact `d * Σq` (what Q4_0's offset uses).
#[derive(Debug, Default, Clone)]
pub struct QActivations {
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    sx: Vec<f32>,
    q: Vec<i8>,
    q16: Vec<i16>,
}

impl QActivations {
    fn quantize(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        let nb = cols / QK;
        self.cols = cols;
        self.d.resize(t_rows * nb, 0.0);
        self.s.resize(t_rows * nb, 0.0);
        self.sx.resize(t_rows * nb, 0.0);
        self.q.resize(t_rows * cols, 0);
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let qs = &mut self.q[b * QK..(b + 1) * QK];
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                // roundf: half away from zero, as C's roundf.
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            let dh = f16::from_f32(d).to_f32();
            self.d[b] = dh;
            self.s[b] = f16::from_f32(sum as f32 * d).to_f32();
            self.sx[b] = sum as f32 * dh;
        }
        if cfg!(target_arch = "wasm32") {
            self.q16.clear();
            self.q16.extend(self.q.iter().map(|&v| v as i16));
        }
    }

    fn row(&self, t: usize) -> QRow<'_> {
        let nb = self.cols / QK;
        let (bs, vs) = (t * nb..(t + 1) * nb, t * self.cols..(t + 1) * self.cols);
        QRow { d: &self.d[bs.clone()], s: &self.s[bs.clone()], sx: &self.sx[bs], q: &self.q[vs.clone()], q16: self.q16.get(vs).unwrap_or(&[]) }
    }
}

#[derive(Clone, Copy)]
struct QRow<'a> {
    d: &'a [f32],
    s: &'a [f32],
    sx: &'a [f32],
    q: &'a [i8],
    #[allow(dead_code)]
    q16: &'a [i16],
}

/// Q4_0 or Q4_1: unsigned values 0..16 times the activations, plus the
/// offset term (Q4_1's minimum against the rounded `s`, Q4_0's `-8d` against the exact sum).
#[inline(always)]
fn dot_q4(d: &[f32], m: &[f32], q: &[u8], layout: Q4Layout, format: QFormat, y: QRow) -> f32 {
    let s = if format == QFormat::Q4_1 { y.s } else { y.sx };
    let mut acc = 0f32;
    for b in 0..d.len() {
        let qb = &q[b * 16..b * 16 + 16];
        let yb = &y.q[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for (j, &yv) in yb.iter().enumerate() {
            sumi += layout.get(qb, j) as i32 * yv as i32;
        }
        acc += sumi as f32 * d[b] * y.d[b];
        acc += m[b] * s[b];
    }
    acc
}

#[inline(always)]
fn dot_q8_0(d: &[f32], q: &[u8], y: QRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..d.len() {
        let qb = &q[b * 32..b * 32 + 32];
        let yb = &y.q[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += qb[j] as i8 as i32 * yb[j] as i32;
        }
        acc += sumi as f32 * d[b] * y.d[b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::QRow;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    /// 16 bytes of nibbles → 32 bytes: low nibbles first, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles(q: *const u8) -> __m256i {
        let b = _mm_loadu_si128(q as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(b, m);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// Sums of 4 adjacent u8×i8 products in 8 i32 lanes, as floats.
    #[inline(always)]
    unsafe fn us8_pairs(ux: __m256i, sy: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(ux, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn i8_pairs(x: __m256i, y: __m256i) -> __m256 {
        us8_pairs(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_0(d: &[f32], q: &[u8], y: &QRow) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for b in 0..d.len() {
            let s = _mm256_set1_ps(d[b] * y.d[b]);
            let qx = _mm256_sub_epi8(nibbles(q.as_ptr().add(b * 16)), _mm256_set1_epi8(8));
            let qy = _mm256_loadu_si256(y.q.as_ptr().add(b * 32) as *const __m256i);
            acc = _mm256_fmadd_ps(s, i8_pairs(qx, qy), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1(d: &[f32], m: &[f32], q: &[u8], y: &QRow) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for b in 0..d.len() {
            summs += m[b] * y.s[b];
            let s = _mm256_set1_ps(d[b] * y.d[b]);
            let qx = nibbles(q.as_ptr().add(b * 16));
            let qy = _mm256_loadu_si256(y.q.as_ptr().add(b * 32) as *const __m256i);
            acc = _mm256_fmadd_ps(s, us8_pairs(qx, qy), acc);
        }
        hsum(acc) + summs
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_0(d: &[f32], q: &[u8], y: &QRow) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for b in 0..d.len() {
            let s = _mm256_set1_ps(d[b] * y.d[b]);
            let qx = _mm256_loadu_si256(q.as_ptr().add(b * 32) as *const __m256i);
            let qy = _mm256_loadu_si256(y.q.as_ptr().add(b * 32) as *const __m256i);
            acc = _mm256_fmadd_ps(s, i8_pairs(qx, qy), acc);
        }
        hsum(acc)
    }
}

/// wasm simd128 kernels over the [`Q4Layout::Lanes`] layout and i16 activations.
/// A pass takes `R` weight rows against `C` activation rows so that every
/// unpacked weight vector and every loaded activation vector is used several
/// times: 4 rows × 1 for decode, 1 row × 4 for prefill.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{QActivations, QFormat, QMatrix, QK};
    use core::arch::wasm32::*;

    pub fn matmul(m: &QMatrix, t_rows: usize, act: &QActivations, out: &mut [f32]) {
        let rows = m.rows;
        let mut t = 0;
        if t_rows >= 4 {
            while t + 4 <= t_rows {
                for r in 0..rows {
                    tile::<1, 4>(m, r, t, act, out);
                }
                t += 4;
            }
        }
        while t < t_rows {
            let mut r = 0;
            while r + 4 <= rows {
                tile::<4, 1>(m, r, t, act, out);
                r += 4;
            }
            while r < rows {
                tile::<1, 1>(m, r, t, act, out);
                r += 1;
            }
            t += 1;
        }
    }

    #[inline(always)]
    fn hsum(v: v128) -> f32 {
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
    }

    #[inline(always)]
    unsafe fn ld(p: *const u8) -> v128 {
        v128_load(p as *const v128)
    }

    /// Weight rows `r0..r0+R` against activation rows `t0..t0+C`.
    #[inline(always)]
    fn tile<const R: usize, const C: usize>(m: &QMatrix, r0: usize, t0: usize, act: &QActivations, out: &mut [f32]) {
        let nb = m.cols / QK;
        let mut acc = [[f32x4_splat(0.0); C]; R];
        let q8 = m.format == QFormat::Q8_0;
        let bw = if q8 { 32 } else { 16 };
        let mask = u16x8_splat(0x0F);
        for b in 0..nb {
            // SAFETY: every row has nb blocks of bw weight bytes and 32 i16 activations.
            let mut y = [[i16x8_splat(0); 4]; C];
            for c in 0..C {
                let p = act.q16[(t0 + c) * m.cols + b * QK..].as_ptr() as *const u8;
                for k in 0..4 {
                    y[c][k] = unsafe { ld(p.add(16 * k)) };
                }
            }
            for r in 0..R {
                let p = m.qs[((r0 + r) * nb + b) * bw..].as_ptr();
                let w = if q8 {
                    let (a, bb) = unsafe { (ld(p), ld(p.add(16))) };
                    [i16x8_extend_low_i8x16(a), i16x8_extend_high_i8x16(a), i16x8_extend_low_i8x16(bb), i16x8_extend_high_i8x16(bb)]
                } else {
                    let v = unsafe { ld(p) };
                    [v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask), v128_and(u16x8_shr(v, 8), mask), u16x8_shr(v, 12)]
                };
                let dw = m.d[(r0 + r) * nb + b];
                for c in 0..C {
                    let isum = i32x4_add(
                        i32x4_add(i32x4_dot_i16x8(w[0], y[c][0]), i32x4_dot_i16x8(w[1], y[c][1])),
                        i32x4_add(i32x4_dot_i16x8(w[2], y[c][2]), i32x4_dot_i16x8(w[3], y[c][3])),
                    );
                    let scale = f32x4_splat(dw * act.d[(t0 + c) * nb + b]);
                    acc[r][c] = f32x4_add(acc[r][c], f32x4_mul(f32x4_convert_i32x4(isum), scale));
                }
            }
        }
        for r in 0..R {
            let row = r0 + r;
            for c in 0..C {
                let t = t0 + c;
                let mut v = hsum(acc[r][c]);
                if !q8 {
                    let s = if m.format == QFormat::Q4_1 { &act.s } else { &act.sx };
                    let (mm, ss) = (&m.m[row * nb..(row + 1) * nb], &s[t * nb..(t + 1) * nb]);
                    v += crate::backend::cpu::ops::dot(mm, ss);
                }
                out[t * m.rows + row] = v;
            }
        }
    }
}
