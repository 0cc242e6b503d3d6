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
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            self.dots_simd128(t_rows, act, out);
            return;
        }
        #[allow(unreachable_code)]
        self.dots(t_rows, act, out);
    }

    /// The portable kernels (the reference the SIMD ones are tested against).
    pub fn matmul_portable(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        act.quantize(x, t_rows, self.cols);
        self.dots(t_rows, act, out);
    }

    /// wasm simd128 kernels: each weight block is unpacked once and multiplied
    /// with up to four activation rows (prefill reuses the weights in registers).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn dots_simd128(&self, t_rows: usize, act: &QActivations, out: &mut [f32]) {
        let nb = self.cols / QK;
        let rows: Vec<QRow> = (0..t_rows).map(|t| act.row(t)).collect();
        for r in 0..self.rows {
            let d = &self.d[r * nb..(r + 1) * nb];
            let mut t = 0;
            while t < t_rows {
                let n = (t_rows - t).min(4);
                let ys = &rows[t..t + n];
                let mut res = [0f32; 4];
                match self.format {
                    QFormat::Q4_0 => simd128::dot_q4(d, None, &self.qs[r * nb * 16..(r + 1) * nb * 16], ys, &mut res),
                    QFormat::Q4_1 => simd128::dot_q4(d, Some(&self.m[r * nb..(r + 1) * nb]), &self.qs[r * nb * 16..(r + 1) * nb * 16], ys, &mut res),
                    QFormat::Q8_0 => simd128::dot_q8_0(d, &self.qs[r * nb * 32..(r + 1) * nb * 32], ys, &mut res),
                }
                for (i, v) in res[..n].iter().enumerate() {
                    out[(t + i) * self.rows + r] = *v;
                }
                t += n;
            }
        }
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
                        out[t * self.rows + r] = dot_q4(d, None, q, act.row(t));
                    }
                }
                QFormat::Q4_1 => {
                    let q = &self.qs[r * nb * 16..(r + 1) * nb * 16];
                    let m = &self.m[r * nb..(r + 1) * nb];
                    for t in 0..t_rows {
                        out[t * self.rows + r] = dot_q4(d, Some(m), q, act.row(t));
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

#[derive(Clone, Copy)]
struct QRow<'a> {
    d: &'a [f32],
    s: &'a [f32],
    q: &'a [i8],
}

/// Q4_0 (`m` None: values 0..16 minus 8) or Q4_1 (`m` Some: values plus the block minimum).
#[inline(always)]
fn dot_q4(d: &[f32], m: Option<&[f32]>, q: &[u8], y: QRow) -> f32 {
    let off = if m.is_some() { 0 } else { 8 };
    let mut acc = 0f32;
    for b in 0..d.len() {
        let qb = &q[b * 16..b * 16 + 16];
        let yb = &y.q[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (qb[j] & 0x0F) as i32 - off;
            let hi = (qb[j] >> 4) as i32 - off;
            sumi += lo * yb[j] as i32 + hi * yb[j + 16] as i32;
        }
        acc += sumi as f32 * d[b] * y.d[b];
        if let Some(m) = m {
            acc += m[b] * y.s[b];
        }
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

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::QRow;
    use core::arch::wasm32::*;

    #[inline(always)]
    fn hsum(v: v128) -> f32 {
        f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v) + f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v)
    }

    /// Σ x·y over 16 signed bytes, as 4 i32 lanes.
    #[inline(always)]
    fn dot16(x: v128, y: v128) -> v128 {
        let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(x), i16x8_extend_low_i8x16(y));
        let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(x), i16x8_extend_high_i8x16(y));
        i32x4_add(lo, hi)
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> v128 {
        v128_load(p as *const v128)
    }

    /// Q4_0 (`m` None, values - 8) or Q4_1 (`m` Some, values + min) against up to 4 rows.
    pub fn dot_q4(d: &[f32], m: Option<&[f32]>, q: &[u8], ys: &[QRow], out: &mut [f32; 4]) {
        let n = ys.len();
        let mut acc = [f32x4_splat(0.0); 4];
        let mut summs = [0f32; 4];
        let mask = u8x16_splat(0x0F);
        let eight = i8x16_splat(8);
        for b in 0..d.len() {
            // SAFETY: q holds 16 bytes per block, each row 32 bytes per block.
            let packed = unsafe { load(q.as_ptr().add(b * 16)) };
            let mut lo = v128_and(packed, mask);
            let mut hi = u8x16_shr(packed, 4);
            if m.is_none() {
                lo = i8x16_sub(lo, eight);
                hi = i8x16_sub(hi, eight);
            }
            for i in 0..n {
                let y = &ys[i];
                let (y0, y1) = unsafe { (load(y.q.as_ptr().add(b * 32) as *const u8), load(y.q.as_ptr().add(b * 32 + 16) as *const u8)) };
                let isum = i32x4_add(dot16(lo, y0), dot16(hi, y1));
                let scale = f32x4_splat(d[b] * y.d[b]);
                acc[i] = f32x4_add(acc[i], f32x4_mul(f32x4_convert_i32x4(isum), scale));
                if let Some(m) = m {
                    summs[i] += m[b] * y.s[b];
                }
            }
        }
        for i in 0..n {
            out[i] = hsum(acc[i]) + summs[i];
        }
    }

    pub fn dot_q8_0(d: &[f32], q: &[u8], ys: &[QRow], out: &mut [f32; 4]) {
        let n = ys.len();
        let mut acc = [f32x4_splat(0.0); 4];
        for b in 0..d.len() {
            let (x0, x1) = unsafe { (load(q.as_ptr().add(b * 32)), load(q.as_ptr().add(b * 32 + 16))) };
            for i in 0..n {
                let y = &ys[i];
                let (y0, y1) = unsafe { (load(y.q.as_ptr().add(b * 32) as *const u8), load(y.q.as_ptr().add(b * 32 + 16) as *const u8)) };
                let isum = i32x4_add(dot16(x0, y0), dot16(x1, y1));
                acc[i] = f32x4_add(acc[i], f32x4_mul(f32x4_convert_i32x4(isum), f32x4_splat(d[b] * y.d[b])));
            }
        }
        for i in 0..n {
            out[i] = hsum(acc[i]);
        }
    }
}
