//! The bounded sliding-window KV cache: the heart of kvchat.
//!
//! * Preallocated: one K and one V buffer per layer, `[n_kv_head, capacity, head_dim]`,
//!   allocated once; memory never grows afterwards.
//! * Attention sinks: tokens `0..sinks` live in slots `0..sinks` forever.
//! * A ring for the rest: absolute position `p >= sinks` lives in slot
//!   `sinks + (p - sinks) % (capacity - sinks)`, so evicting the oldest token is
//!   just overwriting its slot; nothing is ever shifted or copied.
//! * RoPE: keys are stored rotated by their *absolute* position. For the ring,
//!   the in-cache distance between a query and a key equals their absolute
//!   distance, so no re-rotation is ever needed. Only the sinks sit closer to
//!   the query in the cache than in the sequence; once tokens have been
//!   evicted, the query is rotated a second time at its in-cache position
//!   (`capacity - 1`) for its dot products with the sinks. This is exactly
//!   StreamingLLM's "positions within the cache" at the cost of one extra
//!   rotation of the query per layer (see ARCHITECTURE.md).
//! * Prefix reuse: the cache remembers the token ids it has seen and
//!   [`KvCache::reuse_prefix`] keeps the longest common prefix with a new request.

use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::f16;

/// Element type of the stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDType {
    F32,
    F16,
}

impl KvDType {
    pub fn size(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::F16 => 2,
        }
    }
}

/// How big the cache is and how it evicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCacheConfig {
    /// Capacity in tokens (sinks included).
    pub window: usize,
    /// Leading tokens that are never evicted.
    pub sinks: usize,
    pub dtype: KvDType,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self { window: 2048, sinks: 4, dtype: KvDType::F32 }
    }
}

impl KvCacheConfig {
    /// Bytes one token costs across all layers (K and V).
    pub fn bytes_per_token(&self, n_layer: usize, kv_dim: usize) -> usize {
        2 * n_layer * kv_dim * self.dtype.size()
    }

    /// The largest window that fits `budget` bytes.
    pub fn window_for_budget(budget: usize, n_layer: usize, kv_dim: usize, dtype: KvDType) -> usize {
        let per = 2 * n_layer * kv_dim * dtype.size();
        budget / per.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::InvalidOption("kv window must be at least 1 token".into()));
        }
        if self.sinks >= self.window {
            return Err(Error::InvalidOption(format!(
                "kv window ({}) must be larger than the number of sink tokens ({})",
                self.window, self.sinks
            )));
        }
        Ok(())
    }
}

/// A snapshot of the cache's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub capacity: usize,
    pub used: usize,
    pub sinks: usize,
    pub evicted: usize,
    pub bytes: usize,
}

/// Preallocated storage of one layer's keys or values, `[n_kv, capacity, head_dim]`.
enum Store {
    F32(Vec<f32>),
    /// `special`: some value ever written was inf or NaN (the fast conversion then is not exact).
    F16 { data: Vec<f16>, special: bool },
}

impl Store {
    fn new(dtype: KvDType, n: usize) -> Self {
        match dtype {
            KvDType::F32 => Store::F32(vec![0.0; n]),
            KvDType::F16 => Store::F16 { data: vec![f16::ZERO; n], special: false },
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Store::F32(s) => s[at..at + x.len()].copy_from_slice(x),
            Store::F16 { data, special } => {
                let d = &mut data[at..at + x.len()];
                d.convert_from_f32_slice(x);
                *special |= d.iter().any(|h| !h.is_finite());
            }
        }
    }

    fn copy_span(&mut self, src: &Store, span: std::ops::Range<usize>) {
        match (self, src) {
            (Store::F32(d), Store::F32(s)) => d[span.clone()].copy_from_slice(&s[span]),
            (Store::F16 { data: d, special: ds }, Store::F16 { data: s, special: ss }) => {
                d[span.clone()].copy_from_slice(&s[span]);
                *ds |= *ss;
            }
            _ => {} // impossible: copy_from checks that the configurations (and so the types) match
        }
    }

    /// The values in `span` as f32 (converted into `tmp` for f16 storage).
    fn rows<'a>(&'a self, span: std::ops::Range<usize>, tmp: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Store::F32(s) => &s[span],
            Store::F16 { data, special } => {
                tmp.resize(span.len(), 0.0);
                ops::f16_to_f32_slice(&data[span], tmp, !*special);
                &tmp[..]
            }
        }
    }
}

struct LayerCache {
    k: Store,
    v: Store,
}

/// Reusable buffers for [`KvCache::attend_token`] (nothing is allocated per token
/// once they have grown to the cache's size).
#[derive(Default)]
pub struct AttnScratch {
    q: Vec<f32>,
    q_sink: Vec<f32>,
    groups: Vec<GroupScratch>,
}

/// One kv head's buffers (each may run on its own thread).
#[derive(Default)]
struct GroupScratch {
    scores: Vec<f32>,
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
}

/// A pointer handed to the threads of one attention call, each using its own part.
struct SyncPtr<T>(*mut T);
// SAFETY: see the single use in `attend_token`: disjoint parts per thread.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

struct GroupArgs {
    hd: usize,
    used: usize,
    cap: usize,
    /// Slots below this hold sinks seen from the shifted query.
    sink_until: usize,
    scale: f32,
    f16: bool,
}

impl GroupArgs {
    /// Key `s + 1` is in use and meets the same query as key `s` (both sinks or
    /// both not): the score loops take the two keys in one pass.
    #[inline(always)]
    fn pairs_with_next(&self, s: usize) -> bool {
        s + 1 < self.used && (s + 1 < self.sink_until) == (s < self.sink_until)
    }
}

/// `N` query heads sharing one kv head: each key and value row is read once
/// for all of them. `q`, `q_sink`, `out`: `N * hd`; `k`, `v`: `used * hd`.
#[inline(always)]
fn attend_group<const N: usize>(a: &GroupArgs, q: &[f32], q_sink: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let (hd, cap) = (a.hd, a.cap);
    #[cfg(target_arch = "x86_64")]
    if hd % 16 == 0 && N <= 4 && crate::backend::cpu::quant::avx512_vnni() {
        // SAFETY: the CPU has AVX-512; the slices as below.
        unsafe {
            x86::scores_avx512::<N>(a, q, q_sink, k, scores);
            x86::softmax_rows::<N>(a, scores);
            x86::weighted_sum_avx512::<N>(scores, cap, a.used, v, hd, out);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if hd % 8 == 0 && x86::avx2() {
        // SAFETY: the CPU has AVX2; q, q_sink, out hold N heads of hd; k, v `used` rows of hd;
        // scores N rows of cap >= used.
        unsafe { x86::scores::<N>(a, q, q_sink, k, scores) };
        // SAFETY: the CPU has AVX2.
        unsafe { x86::softmax_rows::<N>(a, scores) };
        // SAFETY: as above.
        unsafe { x86::weighted_sum::<N>(scores, cap, a.used, v, hd, out) };
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if hd % 8 == 0 {
        // Two keys per pass: twice the independent accumulators (the loop was bound by
        // the latency of one add chain per head), each key's sums in the same order.
        let mut s = 0;
        while s < a.used {
            let qq = if s < a.sink_until { q_sink } else { q };
            let pair = a.pairs_with_next(s);
            if pair {
                // SAFETY: qq holds N heads of hd; keys s and s + 1 are rows of k.
                let (d0, d1) = unsafe { simd::dot_n2::<N>(qq.as_ptr(), k.as_ptr().add(s * hd), hd) };
                for n in 0..N {
                    scores[n * cap + s] = d0[n] * a.scale;
                    scores[n * cap + s + 1] = d1[n] * a.scale;
                }
                s += 2;
            } else {
                // SAFETY: as above, key s only.
                let d = unsafe { simd::dot_n::<N>(qq.as_ptr(), k.as_ptr().add(s * hd), hd) };
                for n in 0..N {
                    scores[n * cap + s] = d[n] * a.scale;
                }
                s += 1;
            }
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let keys = if hd % 8 == 0 { 0 } else { a.used };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let keys = a.used;
    for (s, key) in k.chunks_exact(hd).take(keys).enumerate() {
        let qq = if s < a.sink_until { q_sink } else { q };
        let d = dot_n::<N>(qq, key, hd);
        for n in 0..N {
            scores[n * cap + s] = d[n] * a.scale;
        }
    }
    softmax_rows::<N>(a, scores);
    out.fill(0.0);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if hd % 4 == 0 {
        // SAFETY: v holds `used` rows of hd, out N rows of hd, scores N rows of cap >= used.
        unsafe { simd::weighted_sum::<N>(scores, cap, a.used, v, hd, out) };
        return;
    }
    for (s, val) in v.chunks_exact(hd).enumerate() {
        for n in 0..N {
            ops::axpy(scores[n * cap + s], val, &mut out[n * hd..(n + 1) * hd]);
        }
    }
}

/// Each head's scores → attention weights (rounded to f16 with an f16 cache).
#[inline(always)]
fn softmax_rows<const N: usize>(a: &GroupArgs, scores: &mut [f32]) {
    for n in 0..N {
        let sc = &mut scores[n * a.cap..n * a.cap + a.used];
        ops::softmax(sc);
        if a.f16 {
            ops::round_f16(sc);
        }
    }
}

/// AVX2 attention loops: the portable loops' float operations in their order
/// (eight lanes per head for the dot products, combined as [`dot_n`] does;
/// the weighted sum accumulated key by key), with one 256-bit vector where the
/// portable code has eight lanes, and each head's output row kept in registers.
#[cfg(target_arch = "x86_64")]
mod x86 {
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
            let qq = if s < a.sink_until { q_sink } else { q }.as_ptr();
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
            let qq = if s < a.sink_until { q_sink } else { q }.as_ptr();
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
}

/// wasm simd128 attention loops: raw pointers (no bounds checks in the
/// innermost loops), one f32x4 accumulator per head, four value rows per pass.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    #[inline(always)]
    fn hsum(v: v128) -> f32 {
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
    }

    /// The dot products of `N` contiguous query heads with one key; `hd % 8 == 0`.
    /// Eight lanes (two vectors) per head, summed as the portable [`super::dot_n`]
    /// (and the WebGPU kernel) sums them: the same bits on every backend.
    #[inline(always)]
    pub unsafe fn dot_n<const N: usize>(q: *const f32, key: *const f32, hd: usize) -> [f32; N] {
        let mut lo = [f32x4_splat(0.0); N];
        let mut hi = [f32x4_splat(0.0); N];
        let mut c = 0;
        while c < hd {
            let (k0, k1) = (v128_load(key.add(c) as *const v128), v128_load(key.add(c + 4) as *const v128));
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

    /// [`dot_n`] for two consecutive keys at `key` (rows of `hd`).
    #[inline(always)]
    pub unsafe fn dot_n2<const N: usize>(q: *const f32, key: *const f32, hd: usize) -> ([f32; N], [f32; N]) {
        let z = f32x4_splat(0.0);
        let (mut a0, mut b0, mut a1, mut b1) = ([z; N], [z; N], [z; N], [z; N]);
        let mut c = 0;
        while c < hd {
            let (k0, k0h) = (v128_load(key.add(c) as *const v128), v128_load(key.add(c + 4) as *const v128));
            let (k1, k1h) = (v128_load(key.add(hd + c) as *const v128), v128_load(key.add(hd + c + 4) as *const v128));
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

    /// `out[n] = Σ_s p[n][s] · v[s]` over `used` value rows of `hd`.
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
}

/// The dot products of `N` contiguous query heads with one key (eight lanes each).
#[inline(always)]
fn dot_n<const N: usize>(q: &[f32], key: &[f32], hd: usize) -> [f32; N] {
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

impl AttnScratch {
    fn prepare(&mut self, q: &[f32], q_sink: &[f32], n_kv: usize, scores: usize, f16: bool) {
        self.q.clear();
        self.q.extend_from_slice(q);
        self.q_sink.clear();
        self.q_sink.extend_from_slice(if q_sink.is_empty() { q } else { q_sink });
        if f16 {
            // With f16 storage the queries and the attention weights are rounded to
            // f16 too, as ggml does when it multiplies by an f16 cache (llama.cpp's
            // default): the f16 cache then reproduces llama.cpp's numerics.
            ops::round_f16(&mut self.q);
            ops::round_f16(&mut self.q_sink);
        }
        self.groups.resize_with(n_kv.max(self.groups.len()), GroupScratch::default);
        for g in &mut self.groups {
            if g.scores.len() < scores {
                g.scores.resize(scores, 0.0);
            }
        }
    }
}

/// See the module documentation.
pub struct KvCache {
    cfg: KvCacheConfig,
    layers: Vec<LayerCache>,
    /// Every token id fed so far, in order (absolute positions `0..len`).
    tokens: Vec<u32>,
    n_kv: usize,
    head_dim: usize,
    n_layer: usize,
}

impl KvCache {
    pub fn new(cfg: KvCacheConfig, n_layer: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        cfg.validate()?;
        let n = n_kv * cfg.window * head_dim;
        let layers = (0..n_layer).map(|_| LayerCache { k: Store::new(cfg.dtype, n), v: Store::new(cfg.dtype, n) }).collect();
        Ok(Self { cfg, layers, tokens: Vec::new(), n_kv, head_dim, n_layer })
    }

    /// The policy alone (slots, sinks, eviction, prefix reuse) for a cache whose
    /// keys and values live elsewhere (the GPU backend's buffers).
    pub fn without_storage(cfg: KvCacheConfig, n_layer: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, layers: Vec::new(), tokens: Vec::new(), n_kv, head_dim, n_layer })
    }

    pub fn config(&self) -> KvCacheConfig {
        self.cfg
    }
    pub fn capacity(&self) -> usize {
        self.cfg.window
    }
    pub fn sinks(&self) -> usize {
        self.cfg.sinks
    }
    /// Size of the ring (the evictable part).
    fn ring(&self) -> usize {
        self.cfg.window - self.cfg.sinks
    }
    /// Tokens seen so far (the absolute position of the next token).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn used(&self) -> usize {
        self.len().min(self.capacity())
    }
    pub fn evicted(&self) -> usize {
        self.len().saturating_sub(self.capacity())
    }
    /// The token ids seen so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// Bytes held by the preallocated K/V storage.
    pub fn bytes(&self) -> usize {
        self.n_layer * 2 * self.n_kv * self.cfg.window * self.head_dim * self.cfg.dtype.size()
    }
    pub fn stats(&self) -> KvStats {
        KvStats {
            capacity: self.capacity(),
            used: self.used(),
            sinks: self.sinks().min(self.len()),
            evicted: self.evicted(),
            bytes: self.bytes(),
        }
    }

    /// The slot that absolute position `p` occupies.
    pub fn slot(&self, p: usize) -> usize {
        let s = self.cfg.sinks;
        if p < s {
            p
        } else {
            s + (p - s) % self.ring()
        }
    }

    /// Makes this cache a copy of `other` (same configuration, nothing evicted
    /// yet): its tokens and the keys and values of the slots in use. Batches
    /// prefill a shared prompt prefix once and start each sequence from a copy.
    pub fn copy_from(&mut self, other: &KvCache) -> Result<()> {
        // Two caches without storage (the GPU's) copy the policy alone; the caller copies the storage.
        let shaped = self.layers.len() == self.n_layer || self.layers.is_empty();
        if other.cfg != self.cfg || other.layers.len() != self.layers.len() || !shaped || other.n_kv != self.n_kv || other.head_dim != self.head_dim {
            return Err(Error::Backend("copy between caches of different shapes".into()));
        }
        if other.evicted() > 0 {
            return Err(Error::Backend("cannot copy a cache that has evicted tokens".into()));
        }
        let (used, cap, hd) = (other.used(), self.cfg.window, self.head_dim);
        for (dst, src) in self.layers.iter_mut().zip(&other.layers) {
            for g in 0..self.n_kv {
                let span = g * cap * hd..(g * cap + used) * hd;
                dst.k.copy_span(&src.k, span.clone());
                dst.v.copy_span(&src.v, span);
            }
        }
        self.tokens.clear();
        self.tokens.extend_from_slice(&other.tokens);
        Ok(())
    }

    /// Forgets everything (the storage stays allocated).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Keeps the longest common prefix of the cached tokens and `ids`, leaving at
    /// least one token of `ids` to be fed (its logits are needed). Returns how
    /// many tokens of `ids` are already in the cache. Once tokens have been
    /// evicted, a request that diverges from the history starts from scratch:
    /// the evicted keys cannot be restored.
    pub fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let common = self.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let keep = common.min(ids.len().saturating_sub(1));
        if keep < self.len() {
            if self.evicted() > 0 {
                self.tokens.clear();
                return 0;
            }
            self.tokens.truncate(keep);
        }
        keep
    }

    /// How many of `want` tokens the next chunk may hold: a chunk either fits
    /// without evicting, or starts on a full cache and evicts at most the ring.
    pub fn next_chunk(&self, want: usize) -> usize {
        let n = self.len();
        let cap = self.capacity();
        let limit = if n < cap { cap - n } else { self.ring() };
        want.min(limit).max(1)
    }

    /// True when this chunk's queries see the sinks at in-cache distance
    /// (tokens have been, or are being, evicted).
    pub fn shifted(&self) -> bool {
        self.len() >= self.capacity() && self.cfg.sinks > 0
    }

    /// In-cache position of the query at absolute position `p` once evictions happened.
    pub fn sink_query_position(&self) -> usize {
        self.capacity() - 1
    }

    /// Attention of one layer for the token at absolute position `p` (the
    /// tokens of a chunk are fed in order, `len()..len()+T`; call
    /// [`commit`](Self::commit) after the last layer).
    ///
    /// * `q`: `[n_head * head_dim]`, rotated at `p`;
    /// * `q_sink`: the same query rotated at [`sink_query_position`](Self::sink_query_position),
    ///   used for the sinks once `p >= capacity` (tokens have been evicted);
    /// * `k`, `v`: `[n_kv * head_dim]`, the key rotated at `p`.
    ///
    /// The key and value are written into their slot first (evicting the
    /// oldest ring entry once the cache is full: exactly the key that falls out
    /// of this token's window), then the query attends over every slot in use,
    /// in place. Later tokens of the chunk are not in the cache yet, so the
    /// chunk is causal without a mask. Writes `[n_head * head_dim]` to `out`.
    pub fn attend_token(&mut self, layer: usize, p: usize, q: &[f32], q_sink: &[f32], k: &[f32], v: &[f32], scratch: &mut AttnScratch, out: &mut [f32]) {
        let (hd, n_kv, cap, sinks) = (self.head_dim, self.n_kv, self.cfg.window, self.cfg.sinks);
        let n_head = q.len() / hd;
        let n_rep = n_head / n_kv;
        let slot = self.slot(p);
        let lc = &mut self.layers[layer];
        for g in 0..n_kv {
            let at = (g * cap + slot) * hd;
            lc.k.write(at, &k[g * hd..(g + 1) * hd]);
            lc.v.write(at, &v[g * hd..(g + 1) * hd]);
        }
        let used = (p + 1).min(cap);
        let sink_until = if p >= cap { sinks } else { 0 };
        let scale = 1.0 / (hd as f32).sqrt();
        let f16 = self.cfg.dtype == KvDType::F16;
        scratch.prepare(q, q_sink, n_kv, n_rep * cap, f16);
        let AttnScratch { q, q_sink, groups } = scratch;
        let lc = &self.layers[layer];
        let args = GroupArgs { hd, used, cap, sink_until, scale, f16 };
        let (q, q_sink) = (&q[..], &q_sink[..]);
        let groups_ptr = SyncPtr(groups.as_mut_ptr());
        let out_ptr = SyncPtr(out.as_mut_ptr());
        let run = |g: usize| {
            // SAFETY: each group index is run by exactly one thread, and group g owns its
            // scratch and the heads g*n_rep..(g+1)*n_rep of `out`.
            let gs = unsafe { &mut *groups_ptr.get().add(g) };
            let og = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(g * n_rep * hd), n_rep * hd) };
            let heads = g * n_rep * hd..(g + 1) * n_rep * hd;
            let span = g * cap * hd..(g * cap + used) * hd;
            let k = lc.k.rows(span.clone(), &mut gs.kbuf);
            let v = lc.v.rows(span, &mut gs.vbuf);
            let (qg, qsg) = (&q[heads.clone()], &q_sink[heads]);
            let scores = &mut gs.scores;
            match n_rep {
                1 => attend_group::<1>(&args, qg, qsg, k, v, scores, og),
                2 => attend_group::<2>(&args, qg, qsg, k, v, scores, og),
                3 => attend_group::<3>(&args, qg, qsg, k, v, scores, og),
                4 => attend_group::<4>(&args, qg, qsg, k, v, scores, og),
                _ => {
                    for r in 0..n_rep {
                        let h = r * hd..(r + 1) * hd;
                        attend_group::<1>(&args, &qg[h.clone()], &qsg[h.clone()], k, v, scores, &mut og[h]);
                    }
                }
            }
        };
        let n = crate::backend::cpu::threads().min(n_kv);
        if n > 1 && used * n_head * hd >= 1 << 15 {
            crate::backend::cpu::par_for(n, &|i| {
                for g in (i..n_kv).step_by(n) {
                    run(g);
                }
            });
        } else {
            for g in 0..n_kv {
                run(g);
            }
        }
    }

    /// Records that the chunk's tokens are now in every layer.
    pub fn commit(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
    }
}
