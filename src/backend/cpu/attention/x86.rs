//! AVX2 and AVX-512 attention loops: the portable loops' float operations in
//! their order (eight lanes per head for the dot products, combined as
//! [`dot_n`](super::portable::dot_n) does; the weighted sum accumulated key by
//! key), with one 256-bit vector where the portable code has eight lanes (two
//! keys per 512-bit vector with AVX-512), and each head's output row kept in registers.

use super::GroupArgs;
use std::arch::x86_64::*;

pub fn avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx2"))
}

/// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`.
#[inline(always)]
unsafe fn combine(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let p = _mm_hadd_ps(h, h);
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}

/// The scaled scores of `N` heads against every key in use (two keys per pass).
#[target_feature(enable = "avx2")]
pub unsafe fn scores<const N: usize>(a: &GroupArgs, q: &[f32], q_sink: &[f32], k: &[f32], scores: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    let kp = k.as_ptr();
    let mut s = 0;
    while s < a.used {
        let qq = if a.shifted(s) { q_sink } else { q }.as_ptr();
        let pair = a.pairs_with_next(s);
        let (k0, k1) = (kp.add(s * hd), kp.add((s + pair as usize) * hd));
        let mut a0 = [_mm256_setzero_ps(); N];
        let mut a1 = [_mm256_setzero_ps(); N];
        let mut c = 0;
        while c < hd {
            let (x0, x1) = (_mm256_loadu_ps(k0.add(c)), _mm256_loadu_ps(k1.add(c)));
            for n in 0..N {
                let qv = _mm256_loadu_ps(qq.add(n * hd + c));
                a0[n] = _mm256_add_ps(a0[n], _mm256_mul_ps(qv, x0));
                a1[n] = _mm256_add_ps(a1[n], _mm256_mul_ps(qv, x1));
            }
            c += 8;
        }
        for n in 0..N {
            *scores.get_unchecked_mut(n * cap + s) = combine(a0[n]) * a.scale;
            if pair {
                *scores.get_unchecked_mut(n * cap + s + 1) = combine(a1[n]) * a.scale;
            }
        }
        s += 1 + pair as usize;
    }
}

/// [`scores`] with 512-bit vectors: two keys per vector (lanes 0..8 the
/// first key's eight partial sums, 8..16 the second's), the query chunk
/// broadcast to both halves: each key's sums in the same order.
#[target_feature(enable = "avx512f,avx512dq")]
pub unsafe fn scores_avx512<const N: usize>(a: &GroupArgs, q: &[f32], q_sink: &[f32], k: &[f32], scores: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    let kp = k.as_ptr();
    let mut s = 0;
    while s < a.used {
        let qq = if a.shifted(s) { q_sink } else { q }.as_ptr();
        let pair = a.pairs_with_next(s);
        let (k0, k1) = (kp.add(s * hd), kp.add((s + pair as usize) * hd));
        let mut acc = [_mm512_setzero_ps(); N];
        let mut c = 0;
        while c < hd {
            let kk = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_loadu_ps(k0.add(c))), _mm256_loadu_ps(k1.add(c)));
            for (n, x) in acc.iter_mut().enumerate() {
                let qv = _mm512_broadcast_f32x8(_mm256_loadu_ps(qq.add(n * hd + c)));
                *x = _mm512_add_ps(*x, _mm512_mul_ps(qv, kk));
            }
            c += 8;
        }
        for (n, x) in acc.iter().enumerate() {
            *scores.get_unchecked_mut(n * cap + s) = combine(_mm512_castps512_ps256(*x)) * a.scale;
            if pair {
                *scores.get_unchecked_mut(n * cap + s + 1) = combine(_mm512_extractf32x8_ps::<1>(*x)) * a.scale;
            }
        }
        s += 1 + pair as usize;
    }
}

/// [`weighted_sum`] with 512-bit vectors, every head at once: each value
/// row (64 columns at a time) is loaded once for all `N` heads.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum_avx512<const N: usize>(p: &[f32], cap: usize, used: usize, v: &[f32], hd: usize, out: &mut [f32]) {
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    let mut c0 = 0;
    while c0 < hd {
        let w = (hd - c0).min(64) / 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; N];
        for s in 0..used {
            let row = vp.add(s * hd + c0);
            let vv: [__m512; 4] = std::array::from_fn(|i| if i < w { _mm512_loadu_ps(row.add(16 * i)) } else { _mm512_setzero_ps() });
            for (n, an) in acc.iter_mut().enumerate() {
                let ps = _mm512_set1_ps(*pp.add(n * cap + s));
                for (i, a) in an.iter_mut().enumerate().take(w) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(ps, vv[i]));
                }
            }
        }
        for (n, an) in acc.iter().enumerate() {
            for (i, a) in an.iter().enumerate().take(w) {
                _mm512_storeu_ps(op.add(n * hd + c0 + 16 * i), *a);
            }
        }
        c0 += 64;
    }
}

/// [`super::softmax_rows`] compiled with AVX2 (the same operations in the same order).
#[target_feature(enable = "avx2")]
pub unsafe fn softmax_rows<const N: usize>(a: &GroupArgs, scores: &mut [f32]) {
    super::softmax_rows::<N>(a, scores)
}

/// `out[n] = Σ_s p[n][s] · v[s]`, key by key, eight columns per vector,
/// up to 64 columns of a head kept in registers across every key.
#[target_feature(enable = "avx2")]
pub unsafe fn weighted_sum<const N: usize>(p: &[f32], cap: usize, used: usize, v: &[f32], hd: usize, out: &mut [f32]) {
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    for n in 0..N {
        let mut c0 = 0;
        while c0 < hd {
            let w = (hd - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for s in 0..used {
                let ps = _mm256_set1_ps(*pp.add(n * cap + s));
                let row = vp.add(s * hd + c0);
                for (i, a) in acc.iter_mut().enumerate().take(w) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(ps, _mm256_loadu_ps(row.add(8 * i))));
                }
            }
            for (i, a) in acc.iter().enumerate().take(w) {
                _mm256_storeu_ps(op.add(n * hd + c0 + 8 * i), *a);
            }
            c0 += 64;
        }
    }
}
