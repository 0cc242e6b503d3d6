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

/// A weight matrix `[rows, cols]` repacked from GGUF blocks.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    /// Per-block scale (f16 widened to f32).
    d: Vec<f32>,
    /// Per-block minimum (Q4_1 only).
    m: Vec<f32>,
    /// Q4: 16 bytes of nibbles per block (low nibbles: values 0..16, high: 16..32).
    /// Q8: 32 signed bytes per block.
    qs: Vec<u8>,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl QMatrix {
    /// Repacks raw GGUF block data. `data.len()` must be `rows * cols / 32 * block_bytes`.
    pub fn from_blocks(format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
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
        let mut m = Vec::new();
        let mut qs = Vec::with_capacity(nb * qlen);
        for blk in data.chunks_exact(bb) {
            d.push(f16_at(blk, 0));
            match format {
                QFormat::Q4_0 => qs.extend_from_slice(&blk[2..18]),
                QFormat::Q4_1 => {
                    m.push(f16_at(blk, 2));
                    qs.extend_from_slice(&blk[4..20]);
                }
                QFormat::Q8_0 => qs.extend_from_slice(&blk[2..34]),
            }
        }
        Some(Self { format, rows, cols, d, m, qs })
    }

    /// `out[t * rows + r] = dot(row r, x row t)` for `x` of `t_rows` rows of `cols`.
    pub fn matmul(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        debug_assert_eq!(x.len(), t_rows * self.cols);
        debug_assert_eq!(out.len(), t_rows * self.rows);
        act.quantize(x, t_rows, self.cols);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { self.dots_avx2(t_rows, act, out) };
                return;
            }
        }
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

    #[inline(always)]
    fn dots(&self, t_rows: usize, act: &QActivations, out: &mut [f32]) {
        let nb = self.cols / QK;
        for r in 0..self.rows {
            let d = &self.d[r * nb..(r + 1) * nb];
            match self.format {
                QFormat::Q4_0 => {
                    let q = &self.qs[r * nb * 16..(r + 1) * nb * 16];
                    for t in 0..t_rows {
                        out[t * self.rows + r] = dot_q4_0(d, q, act.row(t));
                    }
                }
                QFormat::Q4_1 => {
                    let q = &self.qs[r * nb * 16..(r + 1) * nb * 16];
                    let m = &self.m[r * nb..(r + 1) * nb];
                    for t in 0..t_rows {
                        out[t * self.rows + r] = dot_q4_1(d, m, q, act.row(t));
                    }
                }
                QFormat::Q8_0 => {
                    let q = &self.qs[r * nb * 32..(r + 1) * nb * 32];
                    for t in 0..t_rows {
                        out[t * self.rows + r] = dot_q8_0(d, q, act.row(t));
                    }
                }
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
                    let (off, m) = if self.format == QFormat::Q4_0 { (-8.0, 0.0) } else { (0.0, self.m[i]) };
                    for j in 0..16 {
                        let q = self.qs[i * 16 + j];
                        o[j] = ((q & 0x0F) as f32 + off) * d + m;
                        o[j + 16] = ((q >> 4) as f32 + off) * d + m;
                    }
                }
            }
        }
    }
}

/// Activations quantized to Q8 (scales as stored in f16, and Q8_1's `s = d * Σq`).
#[derive(Debug, Default, Clone)]
pub struct QActivations {
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
}

impl QActivations {
    fn quantize(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        let nb = cols / QK;
        self.cols = cols;
        self.d.resize(t_rows * nb, 0.0);
        self.s.resize(t_rows * nb, 0.0);
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
            self.d[b] = f16::from_f32(d).to_f32();
            self.s[b] = f16::from_f32(sum as f32 * d).to_f32();
        }
    }

    fn row(&self, t: usize) -> QRow<'_> {
        let nb = self.cols / QK;
        QRow { d: &self.d[t * nb..(t + 1) * nb], s: &self.s[t * nb..(t + 1) * nb], q: &self.q[t * self.cols..(t + 1) * self.cols] }
    }
}

struct QRow<'a> {
    d: &'a [f32],
    s: &'a [f32],
    q: &'a [i8],
}

#[inline(always)]
fn dot_q4_0(d: &[f32], q: &[u8], y: QRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..d.len() {
        let qb = &q[b * 16..b * 16 + 16];
        let yb = &y.q[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (qb[j] & 0x0F) as i32 - 8;
            let hi = (qb[j] >> 4) as i32 - 8;
            sumi += lo * yb[j] as i32 + hi * yb[j + 16] as i32;
        }
        acc += sumi as f32 * d[b] * y.d[b];
    }
    acc
}

#[inline(always)]
fn dot_q4_1(d: &[f32], m: &[f32], q: &[u8], y: QRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..d.len() {
        let qb = &q[b * 16..b * 16 + 16];
        let yb = &y.q[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (qb[j] & 0x0F) as i32;
            let hi = (qb[j] >> 4) as i32;
            sumi += lo * yb[j] as i32 + hi * yb[j + 16] as i32;
        }
        acc += sumi as f32 * d[b] * y.d[b] + m[b] * y.s[b];
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
