//! The portable attention loops, the reference the SIMD files follow
//! operation for operation: eight lanes per head for the dot products, the
//! weighted sum accumulated key by key.

use super::ValueCodes;
use crate::backend::cpu::ops;

/// The dot products of `N` contiguous query heads with one key (eight lanes each).
#[inline(always)]
pub fn dot_n<const N: usize>(q: &[f32], key: &[f32], hd: usize) -> [f32; N] {
    let mut acc = [[0f32; 8]; N];
    let chunks = hd / 8;
    for c in 0..chunks {
        let kc: &[f32; 8] = key[c * 8..c * 8 + 8].try_into().unwrap();
        for n in 0..N {
            let qc: &[f32; 8] = q[n * hd + c * 8..n * hd + c * 8 + 8].try_into().unwrap();
            for i in 0..8 {
                acc[n][i] += qc[i] * kc[i];
            }
        }
    }
    let mut out = [0f32; N];
    for n in 0..N {
        let a = &acc[n];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for i in chunks * 8..hd {
            s += q[n * hd + i] * key[i];
        }
        out[n] = s;
    }
    out
}

/// `out[n] += Σ_s p[n][s] · v[s]`, key by key.
#[inline(always)]
pub fn weighted_sum<const N: usize>(p: &[f32], cap: usize, v: &[f32], hd: usize, out: &mut [f32]) {
    for (s, val) in v.chunks_exact(hd).enumerate() {
        for n in 0..N {
            ops::axpy(p[n * cap + s], val, &mut out[n * hd..(n + 1) * hd]);
        }
    }
}

/// [`weighted_sum`] over values held as codes: each value `min + code · step`
/// as it is used, key by key.
#[inline(always)]
pub fn weighted_sum_codes<const N: usize>(p: &[f32], cap: usize, v: ValueCodes, hd: usize, out: &mut [f32]) {
    for (s, (codes, param)) in v.codes.chunks_exact(hd).zip(v.params.chunks_exact(2)).enumerate() {
        let (min, step) = (param[0], param[1]);
        for n in 0..N {
            let w = p[n * cap + s];
            for (o, &c) in out[n * hd..(n + 1) * hd].iter_mut().zip(codes) {
                *o += w * (min + c as f32 * step);
            }
        }
    }
}
