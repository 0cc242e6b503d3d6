//! The element-wise and reduction kernels of the forward pass, over plain
//! `f32` slices (no tensors, no allocation): RMSNorm, RoPE, SwiGLU, softmax,
//! and the dot/axpy used by attention. Loops keep eight independent partial
//! sums so LLVM turns them into SIMD (simd128 in wasm, SSE/AVX natively).

/// `out = x / rms(x) * w`. The sum of squares is the WebGPU kernel's, step
/// for step (64 strided compensated partial sums, then a compensated tree
/// reduction: within an ulp or so of the exact sum, like ggml's f64 sum), so
/// both backends compute the same scale to the bit.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = 1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Neumaier's compensated sum: `(hi, lo) += v`.
#[inline(always)]
fn two_sum((hi, lo): (f32, f32), v: f32) -> (f32, f32) {
    let t = hi + v;
    let e = if hi.abs() >= v.abs() { (hi - t) + v } else { (v - t) + hi };
    (t, lo + e)
}

/// Σ x² as quantize.wgsl's 64-thread workgroup computes it: lane `l` sums
/// `x[l], x[l + 64], …` in that order. The lanes advance together, 64
/// values at a time, so the per-lane steps (the same ones, in the same
/// order) compile to vector operations.
fn sum_of_squares(x: &[f32]) -> f32 {
    let (mut hi, mut lo) = ([0f32; 64], [0f32; 64]);
    let mut rows = x.chunks_exact(64);
    for row in &mut rows {
        for lane in 0..64 {
            (hi[lane], lo[lane]) = two_sum((hi[lane], lo[lane]), row[lane] * row[lane]);
        }
    }
    for (lane, &v) in rows.remainder().iter().enumerate() {
        (hi[lane], lo[lane]) = two_sum((hi[lane], lo[lane]), v * v);
    }
    let mut red: [(f32, f32); 64] = std::array::from_fn(|lane| (hi[lane], lo[lane]));
    let mut k = 32;
    while k > 0 {
        for lane in 0..k {
            let o = red[lane + k];
            let a = two_sum(red[lane], o.0);
            red[lane] = (a.0, a.1 + o.1);
        }
        k >>= 1;
    }
    red[0].0 + red[0].1
}

/// Which of the CPU's caches a [`prefetch`] fills.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CacheLevel {
    /// The first level: data needed next.
    First,
    /// The second level: more data, further ahead.
    Second,
}

/// Asks the CPU to bring `data` into its cache ahead of use (x86; a no-op
/// elsewhere: wasm has no prefetch). Changes no value, only when loads wait.
#[inline(always)]
pub fn prefetch<T>(data: &[T], level: CacheLevel) {
    #[cfg(target_arch = "x86_64")]
    match level {
        CacheLevel::First => prefetch_x86::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(data),
        CacheLevel::Second => prefetch_x86::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(data),
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, level);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_x86<const HINT: i32, T>(data: &[T]) {
    let (p, bytes) = (data.as_ptr() as *const i8, std::mem::size_of_val(data));
    let mut at = 0;
    while at < bytes {
        // SAFETY: a prefetch never faults, and `p + at` lies inside `data`.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.add(at)) };
        at += 64;
    }
}

/// Which pairs of a head's values RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Values `2i` and `2i + 1` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`, llama).
    Adjacent,
    /// Values `i` and `i + head_dim / 2` (`LLAMA_ROPE_TYPE_NEOX`: qwen2, gemma 3).
    Halves,
}

impl RopeStyle {
    /// Rotates one head by the angles whose cosines and sines are given
    /// ([`rope`] or [`rope_halves`]; sines negated rotate back).
    #[inline(always)]
    pub fn rotate(self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        match self {
            RopeStyle::Adjacent => rope(x, cos, sin),
            RopeStyle::Halves => rope_halves(x, cos, sin),
        }
    }
}

/// Rotates the adjacent pairs `(x[2i], x[2i+1])` of one head by the angles
/// whose cosines and sines are given (llama.cpp's `LLAMA_ROPE_TYPE_NORM`).
#[inline(always)]
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// RoPE rotating values `i` and `i + head_dim / 2` together (GPT-NeoX's layout,
/// llama.cpp's `LLAMA_ROPE_TYPE_NEOX`: qwen2, gemma 3); the same products as [`rope`].
#[inline(always)]
pub fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// Adds `bias` to every row of `x` (`rows × bias.len()`).
pub fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `e^x` for f32 without a libm call, so loops over it vectorize (wasm has no
/// exp instruction; a libm `expf` per element dominated softmax and SiLU).
/// Cephes' expf: `x = n ln2 + r`, a degree-6 polynomial for `e^r`, `2^n` put
/// in the exponent bits; relative error below 2e-7 (ggml uses a vectorized
/// approximation of the same accuracy for its softmax and SiLU).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.33654, 88.72283);
    // Round to nearest with the 1.5 * 2^23 trick: plain adds, so it vectorizes on SSE2 too.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5e-1;
    // `r + 1` grouped first: shader compilers regroup `(a + r) + 1.0` that way
    // (Mesa's NIR does), and this keeps the WebGPU kernels' exp bit-identical.
    let e = p * r * r + (r + 1.0);
    // 2^n for n in -126..=128: split so both factors are normal floats. `shifted` is
    // 1.5 · 2^23 + n exactly (one unit per ulp there), so its bits minus MAGIC's are n:
    // integer lanes, where `n as i32` (saturating) compiled to a scalar conversion per lane on x86.
    let n = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let h = n >> 1;
    e * f32::from_bits(((h + 127) as u32) << 23) * f32::from_bits(((n - h + 127) as u32) << 23)
}

/// `g = silu(g) * u`.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + exp(-*a)) * b;
    }
}

/// `g = gelu(g) * u` with GELU's tanh approximation (ggml's `ggml_gelu`,
/// gemma's FFN), written as `x · sigmoid(2k(x + 0.044715x³))` (`0.5(1 + tanh t)`
/// is `sigmoid(2t)`) so it shares [`exp`] with SiLU.
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (a, &b) in g.iter_mut().zip(u) {
        let x = *a;
        let t = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
        *a = x / (1.0 + exp(-2.0 * t)) * b;
    }
}

/// RMSNorm of `x` in place (the QK-norm of each head).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = 1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// Σ a·b with eight partial sums (vectorizes; deterministic order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// The largest value (eight lanes, so it vectorizes).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let c = x.chunks_exact(8);
    let rest = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    for ch in c {
        for i in 0..8 {
            m[i] = if ch[i] > m[i] { ch[i] } else { m[i] };
        }
    }
    m.iter().fold(rest, |a, &v| a.max(v))
}

/// Σ x with eight partial sums.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let rest: f32 = c.remainder().iter().sum();
    for ch in c {
        for i in 0..8 {
            acc[i] += ch[i];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + rest
}

/// In-place softmax. Always inlined: the attention kernels call it from functions
/// compiled with AVX2 (`attention::x86::softmax_rows`), which an out-of-line copy
/// (SSE2 only, the native baseline) would not use.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = max(x);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let sum = sum(x);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Σ log-softmax(x)[target] without materializing the softmax.
pub fn log_softmax_at(x: &[f32], target: usize) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (x[target] - max) as f64 - sum.ln()
}

/// f16 → f32 for a slice (an f16 KV cache's rows before attention). The `half`
/// crate converts one value at a time in software on wasm, which made an f16
/// cache 3–4× slower to attend over than an f32 one; this is eight values per
/// step with simd128, exact for every f16 (zero, subnormals, normals, inf, NaN).
/// `finite`: the caller knows there is no inf or NaN (an f16 KV cache records
/// whether it ever stored one): then three operations per four values.
pub fn f16_to_f32_slice(src: &[half::f16], dst: &mut [f32], finite: bool) {
    assert_eq!(src.len(), dst.len());
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::*;
        let rebias = f32x4_splat(f32::from_bits(0x7780_0000)); // 2^112
        // |h| << 13 is the f32 with the same mantissa and an exponent 112 too small, so one
        // multiply by 2^112 rebiases normals and turns subnormals into normals exactly;
        // inf and NaN (exponent 31) get the f32 exponent 255 instead; the sign goes to bit 31.
        let any = |h: v128| -> v128 {
            let a = v128_and(h, u32x4_splat(0x7FFF));
            let f = f32x4_mul(i32x4_shl(a, 13), rebias);
            let special = v128_or(i32x4_shl(a, 13), u32x4_splat(0x7F80_0000));
            let f = v128_bitselect(special, f, i32x4_ge(a, i32x4_splat(0x7C00)));
            v128_or(f, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
        };
        // Finite only: the sign-extended bits << 13 put the sign in bit 31 (and 28..30, masked
        // off) and the magnitude in bits 13..27; the same multiply rebiases.
        let finite_only = |x: v128| f32x4_mul(v128_and(i32x4_shl(x, 13), u32x4_splat(0x8FFF_E000)), rebias);
        let n = src.len() / 8 * 8;
        while done < n {
            // SAFETY: done + 8 <= len of both slices; unaligned loads and stores are allowed.
            unsafe {
                let h = v128_load(src.as_ptr().add(done) as *const v128);
                let (lo, hi) = if finite {
                    (finite_only(i32x4_extend_low_i16x8(h)), finite_only(i32x4_extend_high_i16x8(h)))
                } else {
                    (any(u32x4_extend_low_u16x8(h)), any(u32x4_extend_high_u16x8(h)))
                };
                v128_store(dst.as_mut_ptr().add(done) as *mut v128, lo);
                v128_store(dst.as_mut_ptr().add(done + 4) as *mut v128, hi);
            }
            done += 8;
        }
    }
    let _ = finite;
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has F16C and AVX; both slices hold `len` values.
        done = unsafe { f16c::to_f32(src, dst) };
    }
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = s.to_f32();
    }
}

/// Whether the CPU converts f16 in hardware (F16C, with AVX's 256-bit vectors).
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx"))
}

/// F16C conversions eight values at a time: the `half` crate converts one value
/// per call natively (each checking the CPU's features), which made attention
/// over an f16 cache eight times slower than over an f32 one.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    /// Converts the whole eights of `src` into `dst`; returns how many. Exact
    /// for every f16 (a NaN stays a NaN: hardware and `half` both quiet it).
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn to_f32(src: &[half::f16], dst: &mut [f32]) -> usize {
        let n = src.len().min(dst.len()) / 8 * 8;
        let mut i = 0;
        while i < n {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        n
    }

    /// Rounds the whole eights of `x` to the nearest f16, ties to even, as `half`
    /// does; an eight holding a value that rounds to infinity (|x| >= 65520) or a
    /// NaN is left for the scalar path. Returns how far it got.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn round(x: &mut [f32]) -> usize {
        let n = x.len() / 8 * 8;
        let limit = _mm256_set1_ps(65520.0);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut i = 0;
        while i < n {
            let p = x.as_mut_ptr().add(i);
            let v = _mm256_loadu_ps(p);
            // Not (|v| < 65520) catches both the large values and NaN.
            let ok = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), limit);
            if _mm256_movemask_ps(ok) != 0xFF {
                for v in std::slice::from_raw_parts_mut(p, 8) {
                    *v = half::f16::from_f32(*v).to_f32();
                }
            } else {
                _mm256_storeu_ps(p, _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)));
            }
            i += 8;
        }
        n
    }
}

/// Rounds every value to the nearest f16 (what an f16 KV cache stores; the
/// attention probabilities with an f16 cache). With simd128 four values at a
/// time, bit for bit the `half` crate's rounding (ties to even); chunks with a
/// value beyond the f16 range (inf after rounding) or NaN take the scalar path.
#[inline]
pub fn round_f16(x: &mut [f32]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::*;
        let n = x.len() / 4 * 4;
        while done < n {
            // SAFETY: done + 4 <= x.len(); unaligned loads and stores are allowed.
            unsafe {
                let p = x.as_mut_ptr().add(done) as *mut v128;
                let v = v128_load(p);
                let a = v128_and(v, u32x4_splat(0x7FFF_FFFF));
                // |x| >= 65520 rounds to inf (or is inf / NaN): scalar.
                if !v128_any_true(i32x4_ge(a, i32x4_splat(0x477F_F000))) {
                    // f16 normals (|x| >= 2^-14): drop 13 mantissa bits, ties to even.
                    let lsb = v128_and(u32x4_shr(a, 13), u32x4_splat(1));
                    let normal = v128_and(i32x4_add(i32x4_add(a, u32x4_splat(0x0FFF)), lsb), u32x4_splat(0xFFFF_E000));
                    // f16 subnormals: multiples of 2^-24, rounded by the FPU at magnitude 0.5.
                    let tiny = f32x4_sub(f32x4_add(a, f32x4_splat(0.5)), f32x4_splat(0.5));
                    let r = v128_bitselect(normal, tiny, i32x4_ge(a, i32x4_splat(0x3880_0000)));
                    v128_store(p, v128_or(r, v128_and(v, u32x4_splat(0x8000_0000))));
                } else {
                    for v in &mut x[done..done + 4] {
                        *v = half::f16::from_f32(*v).to_f32();
                    }
                }
            }
            done += 4;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has F16C and AVX.
        done = unsafe { f16c::round(x) };
    }
    for v in x[done..].iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_to_f32_slice_finite_is_exact_for_every_finite_f16() {
        let src: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).filter(|h| h.is_finite()).collect();
        let mut dst = vec![0f32; src.len()];
        super::f16_to_f32_slice(&src, &mut dst, true);
        for (h, f) in src.iter().zip(&dst) {
            assert_eq!(f.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
        }
    }

    #[test]
    fn f16_to_f32_slice_is_exact_for_every_f16() {
        let src: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        let mut dst = vec![0f32; src.len()];
        super::f16_to_f32_slice(&src, &mut dst, false);
        for (h, f) in src.iter().zip(&dst) {
            if h.is_nan() {
                assert!(f.is_nan(), "{:#06x}", h.to_bits());
            } else {
                assert_eq!(f.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
            }
        }
    }

    /// Every path of `round_f16` (F16C natively, simd128 in wasm) rounds as `half` does:
    /// a million f32 bit patterns spread over the whole range (normals, subnormals,
    /// ties, the f16 limits, inf, NaN), in runs of eight that mix them.
    #[test]
    fn round_f16_is_halfs_rounding_for_every_kind_of_value() {
        let mut x: Vec<f32> = (0..1_000_000u32).map(|i| f32::from_bits(i.wrapping_mul(4295))).collect();
        x.extend([65504.0, 65519.99, 65520.0, -65520.0, 6.1035156e-5, 5.9604645e-8, 2.9802322e-8, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, f32::INFINITY, f32::NAN, -0.0]);
        let want: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let mut got = x.clone();
        super::round_f16(&mut got);
        for ((g, w), v) in got.iter().zip(&want).zip(&x) {
            if w.is_nan() {
                assert!(g.is_nan(), "{v:e}");
            } else {
                assert_eq!(g.to_bits(), w.to_bits(), "{v:e}: {g:e} vs {w:e}");
            }
        }
    }

    /// The lanes advanced together give each lane's compensated sum of the
    /// strided loop they replaced (the WebGPU kernel's order), bit for bit.
    #[test]
    fn sum_of_squares_is_the_strided_lanes_sum() {
        fn strided(x: &[f32]) -> f32 {
            let mut red = [(0f32, 0f32); 64];
            for (lane, r) in red.iter_mut().enumerate() {
                for &v in x.iter().skip(lane).step_by(64) {
                    *r = super::two_sum(*r, v * v);
                }
            }
            let mut k = 32;
            while k > 0 {
                for lane in 0..k {
                    let o = red[lane + k];
                    let a = super::two_sum(red[lane], o.0);
                    red[lane] = (a.0, a.1 + o.1);
                }
                k >>= 1;
            }
            red[0].0 + red[0].1
        }
        let mut rng = crate::sampler::Rng::new(5);
        for n in [0, 1, 7, 63, 64, 65, 127, 576, 896, 1000, 1536, 2048, 4864] {
            for scale in [1e-3f32, 1.0, 30.0, 1e4] {
                let x: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale).collect();
                assert_eq!(super::sum_of_squares(&x).to_bits(), strided(&x).to_bits(), "n {n}, scale {scale}");
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_the_range_softmax_and_silu_use() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(super::exp(-1000.0), super::exp(-87.33654));
        assert!(super::exp(f32::NEG_INFINITY) < 1e-37);
    }
}
