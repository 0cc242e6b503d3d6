//! Attention of one query token over the keys and values of one kv head, for
//! the `N` query heads that share it (grouped-query attention): scores, softmax,
//! weighted sum. One file per instruction set with the same function names,
//! [`portable`] the reference: every path does the same float operations in
//! the same order, so every backend gives the same bits (see ARCHITECTURE.md).
//! The cache storage (`kv_cache::storage`) hands these loops its rows in place.

use crate::backend::cpu::ops;

pub mod bf16_keys;
pub mod portable;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
#[cfg(target_arch = "x86_64")]
mod x86;

/// What the loops need to know about one head group's attention.
#[derive(Clone, Copy)]
pub struct GroupArgs {
    pub hd: usize,
    /// Keys in use: the window's, then the recalled ones.
    pub used: usize,
    /// Row stride of the scores (at least `used`).
    pub cap: usize,
    /// Slots below this hold sinks seen from the shifted query.
    pub sink_until: usize,
    /// Keys from here on were recalled from the cold tier (`used` when none
    /// were); they meet the shifted query too.
    pub recall_from: usize,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Round the attention weights to f16 (an f16 cache, as ggml does).
    pub f16: bool,
    /// The rows come from memory, not the CPU's caches (a step's first token
    /// in this layer): x86 loops ask for rows ahead of the one they read. The
    /// later tokens of a prefill chunk find them in cache, where the requests
    /// would only cost instructions (a cold prefill at 3.7k tokens ran 0–8%
    /// slower with them, two A/Bs of 4–5 rounds). No result changes.
    pub streams: bool,
}

impl GroupArgs {
    /// Key `s` meets the shifted query (a sink or a recalled key), not the token's own.
    #[inline(always)]
    fn shifted(&self, s: usize) -> bool {
        s < self.sink_until || s >= self.recall_from
    }

    /// The end of the run of keys from `s` that meet the same query as key `s`.
    #[inline(always)]
    fn run_end(&self, s: usize) -> usize {
        let end = if s < self.sink_until {
            self.sink_until
        } else if s < self.recall_from {
            self.recall_from
        } else {
            self.used
        };
        end.min(self.used)
    }

    /// The window's keys alone, and the recalled keys alone (all meeting the
    /// shifted query), each counted from its own first row.
    fn split(&self) -> (GroupArgs, GroupArgs) {
        let window = GroupArgs { used: self.recall_from, ..*self };
        let recalled = GroupArgs { used: self.used - self.recall_from, sink_until: 0, recall_from: 0, ..*self };
        (window, recalled)
    }
}

pub use bf16_keys::Bf16Keys;

/// The keys and values one kv head's group attends over, `[rows][head_dim]`
/// each: the window's slots in use (read in place from the cache), then the
/// rows recalled from the cold tier (`used - recall_from` of them, keys as
/// bf16, values as codes; none: empty slices).
pub struct Rows<'a> {
    pub window_k: &'a [f32],
    pub window_v: &'a [f32],
    pub recalled_k: Bf16Keys<'a>,
    pub recalled_v: ValueCodes<'a>,
}

/// Recalled values as the cold tier's codes, one a byte (4-bit ones
/// unpacked): value `[s][c]` is `params[2s] + codes[s·hd + c] · params[2s + 1]`
/// (the token's min and step). The weighted sum dequantizes each one as it
/// goes, with the float operations of dequantizing first, so the bits are
/// those of f32 rows read at a quarter of their bytes.
#[derive(Clone, Copy, Default)]
pub struct ValueCodes<'a> {
    pub codes: &'a [u8],
    pub params: &'a [f32],
}

/// The `n_rep` query heads of one kv head: `q`, `q_sink`, `out` hold
/// `n_rep * hd`; `scores` `n_rep * cap`.
pub fn attend_heads(a: &GroupArgs, n_rep: usize, q: &[f32], q_sink: &[f32], rows: &Rows, scores: &mut [f32], out: &mut [f32]) {
    match n_rep {
        1 => attend_group::<1>(a, q, q_sink, rows, scores, out),
        2 => attend_group::<2>(a, q, q_sink, rows, scores, out),
        3 => attend_group::<3>(a, q, q_sink, rows, scores, out),
        4 => attend_group::<4>(a, q, q_sink, rows, scores, out),
        _ => {
            let hd = a.hd;
            for r in 0..n_rep {
                let h = r * hd..(r + 1) * hd;
                attend_group::<1>(a, &q[h.clone()], &q_sink[h.clone()], rows, scores, &mut out[h]);
            }
        }
    }
}

/// The loops one call runs: the widest this CPU and head size allow (every
/// one gives the same bits).
#[derive(Clone, Copy)]
enum Path {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    Portable,
}

impl Path {
    #[inline(always)]
    fn choose(hd: usize, n: usize) -> Path {
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(16) && n <= 4 && crate::backend::cpu::quant::avx512_vnni() {
            return Path::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(8) && x86::avx2() {
            return Path::Avx2;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if hd % 4 == 0 {
            return Path::Simd128;
        }
        let _ = (hd, n);
        Path::Portable
    }
}

/// `N` query heads sharing one kv head: each key and value row is read once
/// for all of them. The window's rows and the recalled ones are scored in
/// two passes, softmaxed together, and summed into `out` in key order, so
/// the result is that of one pass over both.
#[inline(always)]
fn attend_group<const N: usize>(a: &GroupArgs, q: &[f32], q_sink: &[f32], rows: &Rows, scores: &mut [f32], out: &mut [f32]) {
    let path = Path::choose(a.hd, N);
    let (window, recalled) = a.split();
    let from = a.recall_from;
    scores_of::<N>(path, &window, q, q_sink, rows.window_k, scores);
    if recalled.used > 0 {
        recalled_scores_of::<N>(path, &recalled, q_sink, rows.recalled_k, &mut scores[from..]);
    }
    softmax_of::<N>(path, a, scores);
    out.fill(0.0);
    weighted_sum_of::<N>(path, &window, scores, rows.window_v, out);
    if recalled.used > 0 {
        weighted_sum_codes_of::<N>(path, &recalled, &scores[from..], rows.recalled_v, out);
    }
}

/// The scaled scores of the `a.used` keys in `k` into `scores[n * cap + s]`.
#[inline(always)]
fn scores_of<const N: usize>(path: Path, a: &GroupArgs, q: &[f32], q_sink: &[f32], k: &[f32], scores: &mut [f32]) {
    match path {
        // SAFETY (x86): the CPU has the features `Path::choose` checked; q, q_sink hold N heads
        // of hd, k `used` rows of hd, scores N rows of cap >= used.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::scores_avx512::<N, _>(a, q, q_sink, x86::F32Rows(k.as_ptr()), scores) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::scores::<N, _>(a, q, q_sink, x86::F32Rows(k.as_ptr()), scores) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: k holds `used` rows of hd.
        Path::Simd128 if a.hd % 8 == 0 => unsafe { simd128::scores::<N, _>(a, q, q_sink, simd128::F32Rows(k.as_ptr()), scores) },
        _ => scores_portable::<N>(a, q, q_sink, k, scores),
    }
}

/// The scaled scores of the `a.used` recalled keys (bf16, all meeting the
/// shifted query `q_sink`) into `scores[n * cap + s]`: those of the f32 keys
/// they widen to. The SIMD loops read whole runs of the layout
/// ([`bf16_keys::RUN`] columns), so a head size they do not divide goes the
/// portable way.
#[inline(always)]
fn recalled_scores_of<const N: usize>(path: Path, a: &GroupArgs, q_sink: &[f32], k: Bf16Keys, scores: &mut [f32]) {
    debug_assert!(a.sink_until == 0 && a.recall_from == 0 && k.words.len() >= a.used * a.hd / 2);
    let whole_runs = a.hd.is_multiple_of(bf16_keys::RUN);
    match path {
        // SAFETY (x86): the CPU has the features `Path::choose` checked; q_sink holds N heads
        // of hd, k `used` rows of hd / 2 words in runs of 16 columns, scores N rows of cap >= used.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if whole_runs => unsafe { x86::scores_avx512::<N, _>(a, q_sink, q_sink, x86::Bf16Rows(k.words.as_ptr()), scores) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if whole_runs => unsafe { x86::scores::<N, _>(a, q_sink, q_sink, x86::Bf16Rows(k.words.as_ptr()), scores) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: k holds `used` rows of hd in runs of 8.
        Path::Simd128 if whole_runs => unsafe { simd128::scores::<N, _>(a, q_sink, q_sink, simd128::Bf16Rows(k.words.as_ptr()), scores) },
        _ => scores_portable::<N>(a, q_sink, q_sink, &k.widen_rows(a.hd, a.used), scores),
    }
}

#[inline(always)]
fn softmax_of<const N: usize>(path: Path, a: &GroupArgs, scores: &mut [f32]) {
    match path {
        // SAFETY: the CPU has the features `Path::choose` checked.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::softmax_rows_avx512::<N>(a, scores) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::softmax_rows::<N>(a, scores) },
        _ => softmax_rows::<N>(a, scores),
    }
}

/// `out[n] += Σ_s p[n * cap + s] · v[s]` over the `a.used` rows of `v`, key by key.
#[inline(always)]
fn weighted_sum_of<const N: usize>(path: Path, a: &GroupArgs, p: &[f32], v: &[f32], out: &mut [f32]) {
    let (hd, cap, used) = (a.hd, a.cap, a.used);
    match path {
        // SAFETY (all three): the CPU has the features `Path::choose` checked; v holds `used`
        // rows of hd, out N rows of hd, p N rows of cap >= used.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::weighted_sum_avx512::<N>(p, cap, used, v, hd, out, a.streams) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::weighted_sum::<N>(p, cap, used, v, hd, out, a.streams) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Path::Simd128 => unsafe { simd128::weighted_sum::<N>(p, cap, used, v, hd, out) },
        Path::Portable => portable::weighted_sum::<N>(p, cap, &v[..used * hd], hd, out),
    }
}

/// [`weighted_sum_of`] over values held as codes.
#[inline(always)]
fn weighted_sum_codes_of<const N: usize>(path: Path, a: &GroupArgs, p: &[f32], v: ValueCodes, out: &mut [f32]) {
    let (hd, cap, used) = (a.hd, a.cap, a.used);
    let v = ValueCodes { codes: &v.codes[..used * hd], params: &v.params[..2 * used] };
    match path {
        // SAFETY (all three): the CPU has the features `Path::choose` checked; v holds `used`
        // rows of hd codes and their params, out N rows of hd, p N rows of cap >= used.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::weighted_sum_codes_avx512::<N>(p, cap, used, v, hd, out, a.streams) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::weighted_sum_codes::<N>(p, cap, used, v, hd, out, a.streams) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Path::Simd128 => unsafe { simd128::weighted_sum_codes::<N>(p, cap, used, v, hd, out) },
        Path::Portable => portable::weighted_sum_codes::<N>(p, cap, v, hd, out),
    }
}

/// The scaled scores of `N` heads against every key in use, one key at a time.
#[inline(always)]
fn scores_portable<const N: usize>(a: &GroupArgs, q: &[f32], q_sink: &[f32], k: &[f32], scores: &mut [f32]) {
    for (s, key) in k.chunks_exact(a.hd).take(a.used).enumerate() {
        let qq = if a.shifted(s) { q_sink } else { q };
        let d = portable::dot_n::<N>(qq, key, a.hd);
        for n in 0..N {
            scores[n * a.cap + s] = d[n] * a.scale;
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Scores from every x86 path this CPU runs equal the portable loop's bit for bit,
    /// over runs of keys split by sinks and recalled rows at every alignment, and
    /// nothing is written past the keys in use; bf16 keys (whole runs) give the
    /// scores of the f32 keys they widen to.
    #[test]
    fn x86_scores_equal_the_portable_ones() {
        fn check<const N: usize>(hd: usize) {
            let mut seed = 0x2545_f491_u32 ^ (N * 131 + hd) as u32;
            let mut rand = move || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32 - 0.5) * 4.0
            };
            let cap = 61;
            let q: Vec<f32> = (0..N * hd).map(|_| rand()).collect();
            let q_sink: Vec<f32> = (0..N * hd).map(|_| rand()).collect();
            let k: Vec<f32> = (0..cap * hd).map(|_| rand()).collect();
            let mut k_bf16 = vec![0u32; cap * hd / 2];
            bf16_keys::pack_rows(&k, hd, &mut k_bf16);
            let k_widened = Bf16Keys { words: &k_bf16 }.widen_rows(hd, cap);
            for (used, sink_until, recall_from) in [(61, 4, 40), (61, 0, 61), (37, 3, 37), (9, 1, 5), (20, 4, 11), (8, 0, 8), (1, 0, 1)] {
                let a = GroupArgs { hd, used, cap, sink_until, recall_from, scale: 0.125, f16: false, streams: true };
                let mut want = vec![0f32; N * cap];
                scores_portable::<N>(&a, &q, &q_sink, &k, &mut want);
                let mut want_bf16 = vec![0f32; N * cap];
                scores_portable::<N>(&a, &q, &q_sink, &k_widened, &mut want_bf16);
                let mut paths: Vec<(&str, Vec<f32>, &Vec<f32>)> = Vec::new();
                let (f32_rows, bf16_rows) = (x86::F32Rows(k.as_ptr()), x86::Bf16Rows(k_bf16.as_ptr()));
                let whole_runs = hd.is_multiple_of(bf16_keys::RUN);
                if x86::avx2() {
                    let mut got = vec![0f32; N * cap];
                    // SAFETY: AVX2 is present; the slices hold N heads of hd, cap rows of hd, N rows of cap.
                    unsafe { x86::scores::<N, _>(&a, &q, &q_sink, f32_rows, &mut got) };
                    paths.push(("avx2", got, &want));
                    if whole_runs {
                        let mut got = vec![0f32; N * cap];
                        // SAFETY: as above; the bf16 rows are in whole runs of 16.
                        unsafe { x86::scores::<N, _>(&a, &q, &q_sink, bf16_rows, &mut got) };
                        paths.push(("avx2 bf16", got, &want_bf16));
                    }
                }
                if hd.is_multiple_of(16) && crate::backend::cpu::quant::avx512_vnni() {
                    let mut got = vec![0f32; N * cap];
                    // SAFETY: AVX-512 is present; as above.
                    unsafe { x86::scores_avx512::<N, _>(&a, &q, &q_sink, f32_rows, &mut got) };
                    paths.push(("avx512", got, &want));
                    let mut got = vec![0f32; N * cap];
                    // SAFETY: as above.
                    unsafe { x86::scores_avx512::<N, _>(&a, &q, &q_sink, bf16_rows, &mut got) };
                    paths.push(("avx512 bf16", got, &want_bf16));
                }
                for (name, got, want) in paths {
                    for n in 0..N {
                        for s in 0..cap {
                            let (g, w) = (got[n * cap + s], want[n * cap + s]);
                            assert_eq!(g.to_bits(), w.to_bits(), "{name} N={N} hd={hd} used={used} sinks={sink_until} recall={recall_from}: head {n} key {s}: {g} vs {w}");
                        }
                    }
                }
            }
        }
        for hd in [8, 16, 24, 64, 128] {
            check::<1>(hd);
            check::<2>(hd);
            check::<3>(hd);
            check::<4>(hd);
        }
    }

    /// Weighted sums over value codes from every path this CPU runs equal the
    /// portable loop's, and the portable loop's equal the weighted sum over
    /// the same values dequantized first, bit for bit.
    #[test]
    fn weighted_sums_over_codes_equal_those_over_dequantized_rows() {
        fn check<const N: usize>(hd: usize) {
            let mut seed = 0x9e37_79b9_u32 ^ (N * 131 + hd) as u32;
            let mut rand = move || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed
            };
            let (cap, used) = (45, 37);
            let p: Vec<f32> = (0..N * cap).map(|_| rand() as f32 / u32::MAX as f32).collect();
            let codes: Vec<u8> = (0..used * hd).map(|_| rand() as u8).collect();
            let params: Vec<f32> = (0..used).flat_map(|_| [(rand() as f32 / u32::MAX as f32 - 0.5) * 6.0, rand() as f32 / u32::MAX as f32 * 0.05]).collect();
            let start: Vec<f32> = (0..N * hd).map(|_| rand() as f32 / u32::MAX as f32).collect();
            let v = ValueCodes { codes: &codes, params: &params };
            let rows: Vec<f32> = (0..used * hd).map(|i| params[2 * (i / hd)] + codes[i] as f32 * params[2 * (i / hd) + 1]).collect();
            let mut want = start.clone();
            portable::weighted_sum::<N>(&p, cap, &rows, hd, &mut want);
            let mut got = start.clone();
            portable::weighted_sum_codes::<N>(&p, cap, v, hd, &mut got);
            let mut paths = vec![("portable", got)];
            if x86::avx2() {
                let mut got = start.clone();
                // SAFETY: AVX2 is present; v holds `used` rows of hd, out N rows of hd, p N rows of cap.
                unsafe { x86::weighted_sum_codes::<N>(&p, cap, used, v, hd, &mut got, true) };
                paths.push(("avx2", got));
            }
            if hd.is_multiple_of(16) && crate::backend::cpu::quant::avx512_vnni() {
                let mut got = start.clone();
                // SAFETY: AVX-512 is present; as above.
                unsafe { x86::weighted_sum_codes_avx512::<N>(&p, cap, used, v, hd, &mut got, true) };
                paths.push(("avx512", got));
            }
            for (name, got) in paths {
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{name} N={N} hd={hd} output {i}: {g} vs {w}");
                }
            }
        }
        for hd in [8, 16, 24, 64, 128] {
            check::<1>(hd);
            check::<2>(hd);
            check::<3>(hd);
            check::<4>(hd);
        }
    }
}
