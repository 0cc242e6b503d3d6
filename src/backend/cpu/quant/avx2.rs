//! AVX2 kernels over the [`Q4Layout::Ggml`](super::Q4Layout::Ggml) layout
//! (ggml's lane for lane: `maddubs` on unsigned nibbles or sign-moved Q8
//! bytes), and the activation quantization with AVX2 (the portable code
//! compiles to SSE2 only, the baseline x86-64 target).

use super::{portable, Offset, Out, QActivations, QMatrix, QK};
use std::arch::x86_64::*;
use std::ops::Range;

/// AVX2 kernels: four rows at a time against one to four tokens, each
/// block's integer sums reduced across the four rows into one vector, then
/// the float operations of [`portable::dot_row`] in its order (no fused
/// multiply-adds), so native, wasm and WebGPU products agree bit for bit.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    let mut r = rows.start;
    while r + 4 <= rows.end {
        let mut t = 0;
        while t + 4 <= t_rows {
            rows4::<4>(m, r, t, act, out);
            t += 4;
        }
        for t in t..t_rows {
            rows4::<1>(m, r, t, act, out);
        }
        r += 4;
    }
    for r in r..rows.end {
        for t in 0..t_rows {
            out.set(t * m.rows + r, portable::dot_row(m, r, act.row(t)));
        }
    }
}

/// 16 bytes of nibbles → 32 bytes: low nibbles first, then high nibbles (values 0..32 in order).
#[inline(always)]
unsafe fn nibbles(q: *const u8) -> __m256i {
    let b = _mm_loadu_si128(q as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(b, m);
    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// A block's 32 fifth bits (bit `j` for value `j`) → 32 bytes of 16 or 0.
#[inline(always)]
unsafe fn fifth_bits(h: u32) -> __m256i {
    // Byte j takes byte j / 8 of the word, keeps bit j % 8, and becomes 16 where it is set.
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(h as i32), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16))
}

/// Σ x·y over 32 bytes in eight i32 lanes: `x` unsigned (Q4 values 0..16)
/// or, with `signed`, both signed (bytes; the sign moved onto `y`, as ggml
/// does); each pair sum times its lane of `scales` (i16: ones, or Q6_K's
/// scale of values 0..16 in the low eight lanes and of 16..32 in the high).
#[inline(always)]
unsafe fn dot32(x: __m256i, y: __m256i, signed: bool, scales: __m256i) -> __m256i {
    let (ux, sy) = if signed { (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) } else { (x, y) };
    _mm256_madd_epi16(_mm256_maddubs_epi16(ux, sy), scales)
}

/// Row `r`, block `b`'s integer scales as [`dot32`]'s `scales` (ones for formats without).
#[inline(always)]
unsafe fn sub_scales(m: &QMatrix, r: usize, b: usize) -> __m256i {
    if !m.format.sub_scales() {
        return _mm256_set1_epi16(1);
    }
    let [lo, hi] = m.sub_scales(r, b);
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}

/// `[Σa, Σb, Σc, Σd]` of four vectors of eight i32 lanes (exact).
#[inline(always)]
unsafe fn reduce4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// Rows `r..r+4` (Ggml layout) against tokens `t0..t0+T`.
#[target_feature(enable = "avx2")]
unsafe fn rows4<const T: usize>(m: &QMatrix, r: usize, t0: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let bytes = m.format.bytes();
    let five = !m.qh.is_empty();
    let offset = m.format.offset();
    let bw = if bytes { 32 } else { 16 };
    let w = |i: usize| m.qs.as_ptr().add((r + i) * nb * bw);
    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
    // The four rows' scales of a block are adjacent (see `sidx`); r is a multiple of four.
    let sc = |v: &[f32], b: usize| _mm_loadu_ps(v.as_ptr().add(((r / 4) * nb + b) * 4));
    let ys = if offset == Offset::Rounded { &act.s } else { &act.sx };
    let mut acc = [_mm_setzero_ps(); T];
    let mut macc = [_mm_setzero_ps(); T];
    for b in 0..nb {
        let load = |p: *const u8, i: usize| {
            if bytes {
                _mm256_loadu_si256(p.add(b * 32) as *const __m256i)
            } else if five {
                _mm256_or_si256(nibbles(p.add(b * 16)), fifth_bits(*m.qh.get_unchecked((r + i) * nb + b)))
            } else {
                nibbles(p.add(b * 16))
            }
        };
        let (x0, x1, x2, x3) = (load(w0, 0), load(w1, 1), load(w2, 2), load(w3, 3));
        let (s0, s1, s2, s3) = (sub_scales(m, r, b), sub_scales(m, r + 1, b), sub_scales(m, r + 2, b), sub_scales(m, r + 3, b));
        let dw = sc(&m.d, b);
        for i in 0..T {
            let t = t0 + i;
            let y = _mm256_loadu_si256(act.q.as_ptr().add(t * m.cols + b * QK) as *const __m256i);
            let s = reduce4(dot32(x0, y, bytes, s0), dot32(x1, y, bytes, s1), dot32(x2, y, bytes, s2), dot32(x3, y, bytes, s3));
            let scale = _mm_mul_ps(dw, _mm_set1_ps(*act.d.get_unchecked(t * nb + b)));
            acc[i] = _mm_add_ps(acc[i], _mm_mul_ps(_mm_cvtepi32_ps(s), scale));
            if offset != Offset::None {
                macc[i] = _mm_add_ps(macc[i], _mm_mul_ps(sc(&m.m, b), _mm_set1_ps(*ys.get_unchecked(t * nb + b))));
            }
        }
    }
    for i in 0..T {
        let mut v = [0f32; 4];
        _mm_storeu_ps(v.as_mut_ptr(), _mm_add_ps(acc[i], macc[i]));
        for (j, x) in v.into_iter().enumerate() {
            out.set((t0 + i) * m.rows + r + j, x);
        }
    }
}

/// [`portable::quantize`] with AVX2: the same operations
/// (the maximum of the magnitudes, `v * (1 / d)`, truncation and the
/// half-away step, an integer sum), eight values per instruction: the same bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize(act: &mut QActivations, x: &[f32], t_rows: usize, cols: usize) {
    act.resize(t_rows, cols);
    let sign = _mm256_set1_ps(-0.0);
    let (half, nhalf) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    // packs interleave the two 128-bit halves: this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xs) in x.chunks_exact(QK).enumerate() {
        let p = xs.as_ptr();
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
        let a: [__m256; 4] = std::array::from_fn(|i| _mm256_andnot_ps(sign, v[i]));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let y = _mm256_mul_ps(v[i], id);
            let t = _mm256_cvttps_epi32(y);
            let f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
            // The comparison masks are -1 where true: t + (f >= 0.5) - (f <= -0.5).
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, nhalf));
            _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
        });
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(act.q.as_mut_ptr().add(b * QK) as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order));
        let s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
        act.set_scales(b, d, sum);
    }
}
