//! wasm simd128 attention loops: raw pointers (no bounds checks in the
//! innermost loops), one f32x4 accumulator per head, four value rows per pass;
//! the portable loops' float operations in their order.

use super::{GroupArgs, ValueCodes};
use core::arch::wasm32::*;

/// Key rows the score loops read: f32 rows, or bf16 ones in runs of eight
/// columns (see `bf16_keys`), which give the same vectors of f32 columns.
pub trait KeyRows: Copy {
    /// Columns `c..c + 4` and `c + 4..c + 8` of key `s` of rows of `hd` (`c % 8 == 0`).
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> (v128, v128);
}

/// f32 key rows.
#[derive(Clone, Copy)]
pub struct F32Rows(pub *const f32);

impl KeyRows for F32Rows {
    #[inline(always)]
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> (v128, v128) {
        let key = self.0.add(s * hd + c);
        (v128_load(key as *const v128), v128_load(key.add(4) as *const v128))
    }
}

/// bf16 key rows, words in runs of eight columns (`hd % 8 == 0`): columns
/// `c..c + 4` are the low halves of the run's four words, `c + 4..c + 8` the high ones.
#[derive(Clone, Copy)]
pub struct Bf16Rows(pub *const u32);

impl KeyRows for Bf16Rows {
    #[inline(always)]
    unsafe fn eight(self, s: usize, c: usize, hd: usize) -> (v128, v128) {
        let words = v128_load(self.0.add((s * hd + c) / 2) as *const v128);
        (i32x4_shl(words, 16), v128_and(words, u32x4_splat(0xFFFF_0000)))
    }
}

/// The scaled scores of `N` heads against every key in use; `hd % 8 == 0`.
/// Runs of keys that meet the same query go four at a time per head
/// ([`four_scores`]); the rest two keys per pass (twice the independent
/// accumulators: the loop was bound by the latency of one add chain per
/// head), each key's sums in the same order.
///
/// # Safety
/// `keys` holds `a.used` rows of `a.hd`.
#[inline(always)]
pub unsafe fn scores<const N: usize, K: KeyRows>(a: &GroupArgs, q: &[f32], q_sink: &[f32], keys: K, scores: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    let mut s = 0;
    while s < a.used {
        let end = a.run_end(s);
        let qq = if a.shifted(s) { q_sink } else { q };
        while s + 4 <= end {
            for n in 0..N {
                // SAFETY: qq holds N heads of hd; keys s..s + 4 are rows of `keys` (s + 4 <= used);
                // scores holds N rows of cap >= used.
                unsafe {
                    let (q, out) = (qq.as_ptr().add(n * hd), scores.as_mut_ptr().add(n * cap + s));
                    if hd == 64 {
                        four_scores(q, keys, s, 64, a.scale, out)
                    } else {
                        four_scores(q, keys, s, hd, a.scale, out)
                    }
                };
            }
            s += 4;
        }
        while s < end {
            if s + 1 < end {
                // SAFETY: qq holds N heads of hd; keys s and s + 1 are rows of `keys`.
                let (d0, d1) = unsafe { dot_n2::<N, K>(qq.as_ptr(), keys, s, hd) };
                for n in 0..N {
                    scores[n * cap + s] = d0[n] * a.scale;
                    scores[n * cap + s + 1] = d1[n] * a.scale;
                }
                s += 2;
            } else {
                // SAFETY: as above, key s only.
                let d = unsafe { dot_n::<N, K>(qq.as_ptr(), keys, s, hd) };
                for n in 0..N {
                    scores[n * cap + s] = d[n] * a.scale;
                }
                s += 1;
            }
        }
    }
}

/// One head's (`q`) scaled scores against the four keys from `s`, stored at
/// `out[..4]`: eight partial sums per key as in [`dot_n`], then the four keys'
/// [`hsum`]s together (the same additions of the same pairs, lanes shuffled
/// instead of extracted one by one).
#[inline(always)]
unsafe fn four_scores<K: KeyRows>(q: *const f32, keys: K, s: usize, hd: usize, scale: f32, out: *mut f32) {
    let z = f32x4_splat(0.0);
    let (mut lo, mut hi) = ([z; 4], [z; 4]);
    let mut c = 0;
    while c < hd {
        let (ql, qh) = (v128_load(q.add(c) as *const v128), v128_load(q.add(c + 4) as *const v128));
        for i in 0..4 {
            let (kl, kh) = keys.eight(s + i, c, hd);
            lo[i] = f32x4_add(lo[i], f32x4_mul(ql, kl));
            hi[i] = f32x4_add(hi[i], f32x4_mul(qh, kh));
        }
        c += 8;
    }
    // Each key's (a0 + a4, a1 + a5, a2 + a6, a3 + a7).
    let v: [v128; 4] = std::array::from_fn(|i| f32x4_add(lo[i], hi[i]));
    // Adjacent lanes added: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
    let pairs = |x: v128, y: v128| f32x4_add(i32x4_shuffle::<0, 2, 4, 6>(x, y), i32x4_shuffle::<1, 3, 5, 7>(x, y));
    let totals = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
    v128_store(out as *mut v128, f32x4_mul(totals, f32x4_splat(scale)));
}

#[inline(always)]
fn hsum(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}

/// The dot products of `N` contiguous query heads with key `s`; `hd % 8 == 0`.
/// Eight lanes (two vectors) per head, summed as the portable [`super::portable::dot_n`]
/// (and the WebGPU kernel) sums them: the same bits on every backend.
#[inline(always)]
pub unsafe fn dot_n<const N: usize, K: KeyRows>(q: *const f32, keys: K, s: usize, hd: usize) -> [f32; N] {
    let mut lo = [f32x4_splat(0.0); N];
    let mut hi = [f32x4_splat(0.0); N];
    let mut c = 0;
    while c < hd {
        let (k0, k1) = keys.eight(s, c, hd);
        for n in 0..N {
            let qp = q.add(n * hd + c);
            lo[n] = f32x4_add(lo[n], f32x4_mul(v128_load(qp as *const v128), k0));
            hi[n] = f32x4_add(hi[n], f32x4_mul(v128_load(qp.add(4) as *const v128), k1));
        }
        c += 8;
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = hsum(f32x4_add(lo[n], hi[n]));
    }
    out
}

/// [`dot_n`] for keys `s` and `s + 1`.
#[inline(always)]
pub unsafe fn dot_n2<const N: usize, K: KeyRows>(q: *const f32, keys: K, s: usize, hd: usize) -> ([f32; N], [f32; N]) {
    let z = f32x4_splat(0.0);
    let (mut a0, mut b0, mut a1, mut b1) = ([z; N], [z; N], [z; N], [z; N]);
    let mut c = 0;
    while c < hd {
        let (k0, k0h) = keys.eight(s, c, hd);
        let (k1, k1h) = keys.eight(s + 1, c, hd);
        for n in 0..N {
            let qp = q.add(n * hd + c);
            let (ql, qh) = (v128_load(qp as *const v128), v128_load(qp.add(4) as *const v128));
            a0[n] = f32x4_add(a0[n], f32x4_mul(ql, k0));
            b0[n] = f32x4_add(b0[n], f32x4_mul(qh, k0h));
            a1[n] = f32x4_add(a1[n], f32x4_mul(ql, k1));
            b1[n] = f32x4_add(b1[n], f32x4_mul(qh, k1h));
        }
        c += 8;
    }
    let (mut o0, mut o1) = ([0f32; N], [0f32; N]);
    for n in 0..N {
        o0[n] = hsum(f32x4_add(a0[n], b0[n]));
        o1[n] = hsum(f32x4_add(a1[n], b1[n]));
    }
    (o0, o1)
}

/// `out[n] += Σ_s p[n][s] · v[s]` over `used` value rows of `hd`.
#[inline(always)]
pub unsafe fn weighted_sum<const N: usize>(p: &[f32], cap: usize, used: usize, v: &[f32], hd: usize, out: &mut [f32]) {
    let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    let mut s = 0;
    while s + 4 <= used {
        for n in 0..N {
            let w = pp.add(n * cap + s);
            let (w0, w1, w2, w3) = (f32x4_splat(*w), f32x4_splat(*w.add(1)), f32x4_splat(*w.add(2)), f32x4_splat(*w.add(3)));
            let o = op.add(n * hd);
            let mut c = 0;
            while c < hd {
                let r = vp.add(s * hd + c);
                let mut acc = v128_load(o.add(c) as *const v128);
                acc = f32x4_add(acc, f32x4_mul(w0, v128_load(r as *const v128)));
                acc = f32x4_add(acc, f32x4_mul(w1, v128_load(r.add(hd) as *const v128)));
                acc = f32x4_add(acc, f32x4_mul(w2, v128_load(r.add(2 * hd) as *const v128)));
                acc = f32x4_add(acc, f32x4_mul(w3, v128_load(r.add(3 * hd) as *const v128)));
                v128_store(o.add(c) as *mut v128, acc);
                c += 4;
            }
        }
        s += 4;
    }
    while s < used {
        for n in 0..N {
            let w = f32x4_splat(*pp.add(n * cap + s));
            let o = op.add(n * hd);
            let mut c = 0;
            while c < hd {
                let acc = f32x4_add(v128_load(o.add(c) as *const v128), f32x4_mul(w, v128_load(vp.add(s * hd + c) as *const v128)));
                v128_store(o.add(c) as *mut v128, acc);
                c += 4;
            }
        }
        s += 1;
    }
}

/// [`weighted_sum`] over values held as codes (`hd % 4 == 0`): eight columns
/// of every head kept in registers across every key ([`codes_columns`]),
/// each run of codes widened and dequantized once for all `N` heads.
#[inline(always)]
pub unsafe fn weighted_sum_codes<const N: usize>(p: &[f32], cap: usize, used: usize, v: ValueCodes, hd: usize, out: &mut [f32]) {
    let (pp, cp, mp, op) = (p.as_ptr(), v.codes.as_ptr(), v.params.as_ptr(), out.as_mut_ptr());
    let mut c0 = 0;
    while c0 + 8 <= hd {
        codes_columns::<N, 2>(pp, cap, used, cp.add(c0), mp, hd, op.add(c0));
        c0 += 8;
    }
    if c0 < hd {
        codes_columns::<N, 1>(pp, cap, used, cp.add(c0), mp, hd, op.add(c0));
    }
}

/// `4 · V` columns from `codes` (rows `hd` apart) of the weighted sum of
/// every head, accumulated in registers over all `used` keys and added to
/// `out` (heads `hd` apart). One loop with nothing but the keys' work in it:
/// a branch on the column count inside it made V8 keep the accumulators on
/// the stack, a store and a load on every add's path (Chromium's codes
/// ran at twice the time of f32 rows' weighted sum).
#[inline(always)]
unsafe fn codes_columns<const N: usize, const V: usize>(p: *const f32, cap: usize, used: usize, codes: *const u8, params: *const f32, hd: usize, out: *mut f32) {
    let mut acc = [[f32x4_splat(0.0); V]; N];
    for (n, an) in acc.iter_mut().enumerate() {
        for (i, a) in an.iter_mut().enumerate() {
            *a = v128_load(out.add(n * hd + 4 * i) as *const v128);
        }
    }
    for s in 0..used {
        let (min, step) = (f32x4_splat(*params.add(2 * s)), f32x4_splat(*params.add(2 * s + 1)));
        let row = codes.add(s * hd);
        // Codes are below 256, so the signed conversion gives the same floats: one
        // instruction on x86, where wasm's unsigned one is several.
        let x: [v128; V] = if V == 2 {
            let wide = u16x8_extend_low_u8x16(v128_load64_zero(row as *const u64));
            let lo = f32x4_add(min, f32x4_mul(f32x4_convert_i32x4(u32x4_extend_low_u16x8(wide)), step));
            let hi = f32x4_add(min, f32x4_mul(f32x4_convert_i32x4(u32x4_extend_high_u16x8(wide)), step));
            std::array::from_fn(|i| if i == 0 { lo } else { hi })
        } else {
            let wide = u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(v128_load32_zero(row as *const u32)));
            [f32x4_add(min, f32x4_mul(f32x4_convert_i32x4(wide), step)); V]
        };
        for (n, an) in acc.iter_mut().enumerate() {
            let w = f32x4_splat(*p.add(n * cap + s));
            for (a, xi) in an.iter_mut().zip(&x) {
                *a = f32x4_add(*a, f32x4_mul(w, *xi));
            }
        }
    }
    for (n, an) in acc.iter().enumerate() {
        for (i, a) in an.iter().enumerate() {
            v128_store(out.add(n * hd + 4 * i) as *mut v128, *a);
        }
    }
}
