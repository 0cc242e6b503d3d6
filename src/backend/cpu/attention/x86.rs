//! AVX2 and AVX-512 attention loops: the portable loops' float operations in
//! their order (eight lanes per head for the dot products, combined as
//! [`dot_n`](super::portable::dot_n) does; the weighted sum accumulated key by
//! key), with one 256-bit vector where the portable code has eight lanes (two
//! keys per 512-bit vector with AVX-512), and each head's output row kept in registers.

use super::{GroupArgs, ValueCodes};
use std::arch::x86_64::*;

/// How far ahead of the row being read the loops ask for rows (software
/// prefetch: no result changes). Long-context decode streams every key and
/// value from memory once a step; with the hardware prefetcher alone one head
/// group of 1,028 keys took 17.8 µs from memory against 7.1 from cache, and
/// asking 12–16 KB ahead brought it to 12.5 (`examples/attention_stream.rs`,
/// an EPYC with AVX-512; 8 and 32 keys ahead were slower).
const KEYS_AHEAD: usize = 64;
const VALUES_AHEAD: usize = 32;
const CODES_AHEAD: usize = 64;

/// Ask for the `lines` cache lines from `p` (which may lie past the end of
/// its slice: a prefetch never faults, and `wrapping_add` keeps the address
/// arithmetic defined).
#[inline(always)]
unsafe fn prefetch_lines(p: *const u8, lines: usize) {
    for j in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(j * 64) as *const i8);
    }
}

pub fn avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx2"))
}

/// Key rows the score loops read: f32 rows, or bf16 ones in runs of sixteen
/// columns (see `bf16_keys`), which give the same vectors of f32 columns.
pub trait KeyRows: Copy {
    /// Bytes a column takes.
    const BYTES: usize;
    /// Where key `s` of rows of `hd` starts (may lie past the rows: only prefetched).
    fn row_bytes(self, s: usize, hd: usize) -> *const u8;
    /// Columns `c..c + 8` of key `s` (`c % 8 == 0`).
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> __m256;
    /// Columns `c..c + 8` of keys `s0` (lanes 0..8) and `s1` (8..16).
    unsafe fn eight_of_two(self, s0: usize, s1: usize, c: usize, hd: usize) -> __m512;
}

/// f32 key rows.
#[derive(Clone, Copy)]
pub struct F32Rows(pub *const f32);

impl KeyRows for F32Rows {
    const BYTES: usize = 4;
    #[inline(always)]
    fn row_bytes(self, s: usize, hd: usize) -> *const u8 {
        self.0.wrapping_add(s * hd) as *const u8
    }
    #[inline(always)]
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> __m256 {
        _mm256_loadu_ps(self.0.add(s * hd + c))
    }
    #[inline(always)]
    unsafe fn eight_of_two(self, s0: usize, s1: usize, c: usize, hd: usize) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(self.eight(s0, c, hd)), self.eight(s1, c, hd))
    }
}

/// bf16 key rows, words in runs of sixteen columns (`hd % 16 == 0`): columns
/// `c..c + 8` are the low halves of the run's words (`c % 16 == 0`) or the high ones.
#[derive(Clone, Copy)]
pub struct Bf16Rows(pub *const u32);

impl KeyRows for Bf16Rows {
    const BYTES: usize = 2;
    #[inline(always)]
    fn row_bytes(self, s: usize, hd: usize) -> *const u8 {
        self.0.wrapping_add(s * hd / 2) as *const u8
    }
    #[inline(always)]
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> __m256 {
        let words = _mm256_loadu_si256(self.0.add((s * hd + c / 16 * 16) / 2) as *const __m256i);
        _mm256_castsi256_ps(if c.is_multiple_of(16) { _mm256_slli_epi32::<16>(words) } else { _mm256_and_si256(words, _mm256_set1_epi32(0xFFFF_0000u32 as i32)) })
    }
    #[inline(always)]
    unsafe fn eight_of_two(self, s0: usize, s1: usize, c: usize, hd: usize) -> __m512 {
        let (run0, run1) = (self.0.add((s0 * hd + c / 16 * 16) / 2), self.0.add((s1 * hd + c / 16 * 16) / 2));
        let words = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(run0 as *const __m256i)), _mm256_loadu_si256(run1 as *const __m256i));
        _mm512_castsi512_ps(if c.is_multiple_of(16) { _mm512_slli_epi32::<16>(words) } else { _mm512_and_si512(words, _mm512_set1_epi32(0xFFFF_0000u32 as i32)) })
    }
}

/// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`.
#[inline(always)]
unsafe fn combine(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let p = _mm_hadd_ps(h, h);
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}

/// The scaled scores of `N` heads against every key in use: runs of keys
/// that meet the same query eight at a time ([`eight_scores`]), the rest two
/// keys per pass.
#[target_feature(enable = "avx2")]
pub unsafe fn scores<const N: usize, K: KeyRows>(a: &GroupArgs, q: &[f32], q_sink: &[f32], keys: K, scores: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    let sp = scores.as_mut_ptr();
    let mut s = 0;
    while s < a.used {
        let end = a.run_end(s);
        let qq = if a.shifted(s) { q_sink } else { q }.as_ptr();
        while s + 8 <= end {
            if a.streams {
                prefetch_lines(keys.row_bytes(s + KEYS_AHEAD, hd), hd * K::BYTES / 8);
            }
            for n in 0..N {
                eight_scores(qq.add(n * hd), keys, s, hd, a.scale, sp.add(n * cap + s));
            }
            s += 8;
        }
        while s < end {
            let pair = s + 1 < end;
            let s1 = s + pair as usize;
            let mut a0 = [_mm256_setzero_ps(); N];
            let mut a1 = [_mm256_setzero_ps(); N];
            let mut c = 0;
            while c < hd {
                let (x0, x1) = (keys.eight(s, c, hd), keys.eight(s1, c, hd));
                for n in 0..N {
                    let qv = _mm256_loadu_ps(qq.add(n * hd + c));
                    a0[n] = _mm256_add_ps(a0[n], _mm256_mul_ps(qv, x0));
                    a1[n] = _mm256_add_ps(a1[n], _mm256_mul_ps(qv, x1));
                }
                c += 8;
            }
            for n in 0..N {
                *sp.add(n * cap + s) = combine(a0[n]) * a.scale;
                if pair {
                    *sp.add(n * cap + s + 1) = combine(a1[n]) * a.scale;
                }
            }
            s += 1 + pair as usize;
        }
    }
}

/// One head's (`q`) scaled scores against the eight keys from `s`, stored at
/// `out[..8]`: eight partial sums per key, then the eight keys combined
/// together (the same additions of the same pairs as [`combine`]).
#[inline(always)]
unsafe fn eight_scores<K: KeyRows>(q: *const f32, keys: K, s: usize, hd: usize, scale: f32, out: *mut f32) {
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut c = 0;
    while c < hd {
        let qv = _mm256_loadu_ps(q.add(c));
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm256_add_ps(*x, _mm256_mul_ps(qv, keys.eight(s + i, c, hd)));
        }
        c += 8;
    }
    // Keys i and i + 1: (a0 + a4, a1 + a5, a2 + a6, a3 + a7) of each, side by side.
    let halves = |x: __m256, y: __m256| _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x, y), _mm256_permute2f128_ps::<0x31>(x, y));
    let (h01, h23, h45, h67) = (halves(acc[0], acc[1]), halves(acc[2], acc[3]), halves(acc[4], acc[5]), halves(acc[6], acc[7]));
    // hadd twice: keys in the order 0, 2, 4, 6, 1, 3, 5, 7.
    let totals = _mm256_hadd_ps(_mm256_hadd_ps(h01, h23), _mm256_hadd_ps(h45, h67));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_permutevar8x32_ps(totals, order), _mm256_set1_ps(scale)));
}

/// [`scores`] with 512-bit vectors: two keys per vector (lanes 0..8 the
/// first key's eight partial sums, 8..16 the second's), the query chunk
/// broadcast to both halves: each key's sums in the same order. Runs of keys
/// that meet the same query go eight at a time ([`eight_scores_avx512`]).
#[target_feature(enable = "avx512f,avx512dq")]
pub unsafe fn scores_avx512<const N: usize, K: KeyRows>(a: &GroupArgs, q: &[f32], q_sink: &[f32], keys: K, scores: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    let sp = scores.as_mut_ptr();
    let mut s = 0;
    while s < a.used {
        let end = a.run_end(s);
        let qq = if a.shifted(s) { q_sink } else { q }.as_ptr();
        while s + 8 <= end {
            eight_scores_avx512::<N, K>(qq, keys, s, hd, a.scale, sp.add(s), cap, a.streams);
            s += 8;
        }
        while s < end {
            let pair = s + 1 < end;
            let s1 = s + pair as usize;
            let mut acc = [_mm512_setzero_ps(); N];
            let mut c = 0;
            while c < hd {
                let kk = keys.eight_of_two(s, s1, c, hd);
                for (n, x) in acc.iter_mut().enumerate() {
                    let qv = _mm512_broadcast_f32x8(_mm256_loadu_ps(qq.add(n * hd + c)));
                    *x = _mm512_add_ps(*x, _mm512_mul_ps(qv, kk));
                }
                c += 8;
            }
            for (n, x) in acc.iter().enumerate() {
                *sp.add(n * cap + s) = combine(_mm512_castps512_ps256(*x)) * a.scale;
                if pair {
                    *sp.add(n * cap + s + 1) = combine(_mm512_extractf32x8_ps::<1>(*x)) * a.scale;
                }
            }
            s += 1 + pair as usize;
        }
    }
}

/// The scaled scores of `N` heads (`q`) against the eight keys from `s`,
/// stored at `out[n * cap..][..8]`: two keys per vector as in
/// [`scores_avx512`], then the eight keys' partial sums combined together
/// ([`combine_eight`]) instead of one key at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn eight_scores_avx512<const N: usize, K: KeyRows>(q: *const f32, keys: K, s: usize, hd: usize, scale: f32, out: *mut f32, cap: usize, streams: bool) {
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    let ahead = keys.row_bytes(s + KEYS_AHEAD, hd);
    let mut c = 0;
    while c < hd {
        if streams {
            // The eight keys KEYS_AHEAD on: their bytes of these eight columns (256 for f32 rows).
            prefetch_lines(ahead.wrapping_add(c * 8 * K::BYTES), K::BYTES);
        }
        let pairs: [__m512; 4] = std::array::from_fn(|i| keys.eight_of_two(s + 2 * i, s + 2 * i + 1, c, hd));
        for (n, an) in acc.iter_mut().enumerate() {
            let qv = _mm512_broadcast_f32x8(_mm256_loadu_ps(q.add(n * hd + c)));
            for (x, kk) in an.iter_mut().zip(&pairs) {
                *x = _mm512_add_ps(*x, _mm512_mul_ps(qv, *kk));
            }
        }
        c += 8;
    }
    let scale = _mm256_set1_ps(scale);
    for (n, an) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(n * cap), _mm256_mul_ps(combine_eight(an), scale));
    }
}

/// [`combine`] for eight keys at once: `z[i]` holds key `2i`'s eight partial
/// sums in lanes 0..8 and key `2i + 1`'s in 8..16; the result is each key's
/// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`, keys in order (the
/// same additions of the same pairs as `combine`).
#[inline(always)]
unsafe fn combine_eight(z: &[__m512; 4]) -> __m256 {
    // Each 128-bit lane j: key j's (a0 + a4, a1 + a5, a2 + a6, a3 + a7); keys 0..4, then 4..8.
    let halves = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y));
    let (low, high) = (halves(z[0], z[1]), halves(z[2], z[3]));
    // Adjacent pairs added within each 128-bit lane (hadd): lane j = [key j: 2 sums, key 4 + j: 2 sums].
    let pairs = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_ps::<0x88>(x, y), _mm512_shuffle_ps::<0xDD>(x, y));
    let quarters = pairs(low, high);
    // Lane j = [key j, key 4 + j, key j, key 4 + j].
    let totals = pairs(quarters, quarters);
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps256(_mm512_permutexvar_ps(order, totals))
}

/// [`weighted_sum`] with 512-bit vectors, every head at once (added to `out`): each value
/// row (64 columns at a time) is loaded once for all `N` heads.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum_avx512<const N: usize>(p: &[f32], cap: usize, used: usize, v: &[f32], hd: usize, out: &mut [f32], streams: bool) {
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    let mut c0 = 0;
    while c0 < hd {
        let w = (hd - c0).min(64) / 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; N];
        for (n, an) in acc.iter_mut().enumerate() {
            for (i, a) in an.iter_mut().enumerate().take(w) {
                *a = _mm512_loadu_ps(op.add(n * hd + c0 + 16 * i));
            }
        }
        for s in 0..used {
            let row = vp.add(s * hd + c0);
            if streams {
                prefetch_lines(vp.wrapping_add((s + VALUES_AHEAD) * hd + c0) as *const u8, w);
            }
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

/// [`super::portable::weighted_sum_codes`] with 512-bit vectors, every head at once
/// (added to `out`): sixteen codes widened and dequantized per vector, once for all `N` heads.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum_codes_avx512<const N: usize>(p: &[f32], cap: usize, used: usize, v: ValueCodes, hd: usize, out: &mut [f32], streams: bool) {
    let (pp, cp, mp, op) = (p.as_ptr(), v.codes.as_ptr(), v.params.as_ptr(), out.as_mut_ptr());
    let mut c0 = 0;
    while c0 < hd {
        let w = (hd - c0).min(64) / 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; N];
        for (n, an) in acc.iter_mut().enumerate() {
            for (i, a) in an.iter_mut().enumerate().take(w) {
                *a = _mm512_loadu_ps(op.add(n * hd + c0 + 16 * i));
            }
        }
        for s in 0..used {
            let row = cp.add(s * hd + c0);
            if streams {
                prefetch_lines(cp.wrapping_add((s + CODES_AHEAD) * hd + c0), 1);
            }
            let (min, step) = (_mm512_set1_ps(*mp.add(2 * s)), _mm512_set1_ps(*mp.add(2 * s + 1)));
            let vv: [__m512; 4] = std::array::from_fn(|i| {
                if i < w {
                    let codes = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(row.add(16 * i) as *const __m128i)));
                    _mm512_add_ps(min, _mm512_mul_ps(codes, step))
                } else {
                    _mm512_setzero_ps()
                }
            });
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

/// [`super::softmax_rows`] compiled with AVX-512 (the same operations in the same
/// order: `exp` and the scaling sixteen lanes at a time, each lane on its own value).
#[target_feature(enable = "avx2,avx512f")]
pub unsafe fn softmax_rows_avx512<const N: usize>(a: &GroupArgs, scores: &mut [f32]) {
    super::softmax_rows::<N>(a, scores)
}

/// [`super::softmax_rows`] compiled with AVX2 (the same operations in the same order).
#[target_feature(enable = "avx2")]
pub unsafe fn softmax_rows<const N: usize>(a: &GroupArgs, scores: &mut [f32]) {
    super::softmax_rows::<N>(a, scores)
}

/// `out[n] += Σ_s p[n][s] · v[s]`, key by key, eight columns per vector,
/// up to 64 columns of a head kept in registers across every key.
#[target_feature(enable = "avx2")]
pub unsafe fn weighted_sum<const N: usize>(p: &[f32], cap: usize, used: usize, v: &[f32], hd: usize, out: &mut [f32], streams: bool) {
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    for n in 0..N {
        let mut c0 = 0;
        while c0 < hd {
            let w = (hd - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (i, a) in acc.iter_mut().enumerate().take(w) {
                *a = _mm256_loadu_ps(op.add(n * hd + c0 + 8 * i));
            }
            for s in 0..used {
                let ps = _mm256_set1_ps(*pp.add(n * cap + s));
                let row = vp.add(s * hd + c0);
                if streams && n == 0 {
                    prefetch_lines(vp.wrapping_add((s + VALUES_AHEAD) * hd + c0) as *const u8, w.div_ceil(2));
                }
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

/// [`super::portable::weighted_sum_codes`] with 256-bit vectors: sixteen
/// columns of every head kept in registers across every key, each eight
/// codes widened and dequantized once for all `N` heads.
#[target_feature(enable = "avx2")]
pub unsafe fn weighted_sum_codes<const N: usize>(p: &[f32], cap: usize, used: usize, v: ValueCodes, hd: usize, out: &mut [f32], streams: bool) {
    let (pp, cp, mp, op) = (p.as_ptr(), v.codes.as_ptr(), v.params.as_ptr(), out.as_mut_ptr());
    let mut c0 = 0;
    while c0 < hd {
        let w = (hd - c0).min(16) / 8;
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for (n, an) in acc.iter_mut().enumerate() {
            for (i, a) in an.iter_mut().enumerate().take(w) {
                *a = _mm256_loadu_ps(op.add(n * hd + c0 + 8 * i));
            }
        }
        for s in 0..used {
            let row = cp.add(s * hd + c0);
            if streams && c0 % 64 == 0 {
                prefetch_lines(cp.wrapping_add((s + CODES_AHEAD) * hd + c0), 1);
            }
            let (min, step) = (_mm256_set1_ps(*mp.add(2 * s)), _mm256_set1_ps(*mp.add(2 * s + 1)));
            let vv: [__m256; 2] = std::array::from_fn(|i| {
                if i < w {
                    let codes = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(row.add(8 * i) as *const __m128i)));
                    _mm256_add_ps(min, _mm256_mul_ps(codes, step))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (n, an) in acc.iter_mut().enumerate() {
                let ps = _mm256_set1_ps(*pp.add(n * cap + s));
                for (i, a) in an.iter_mut().enumerate().take(w) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(ps, vv[i]));
                }
            }
        }
        for (n, an) in acc.iter().enumerate() {
            for (i, a) in an.iter().enumerate().take(w) {
                _mm256_storeu_ps(op.add(n * hd + c0 + 8 * i), *a);
            }
        }
        c0 += 16;
    }
}
