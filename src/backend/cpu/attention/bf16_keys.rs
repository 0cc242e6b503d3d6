//! Recalled keys kept as bf16: the upper half of each key's f32 bits, rounded
//! to nearest (ties to even, as `half` rounds). Widening one back is exact (the half shifted up),
//! so scoring bf16 keys is scoring the f32 keys they widen to, bit for bit,
//! on every path; the keys cost half the bytes a decode step streams.
//!
//! A row of `head_dim` columns (even: the config checks it) is `head_dim / 2`
//! 32-bit words, in runs of `LANES` words for `2 · LANES` columns: word `j`
//! of a run holds column `j` in its low half and column `LANES + j` in its
//! high half. A vector of such words shifted left by 16 is the run's first
//! `LANES` columns as f32, and the same vector with its low halves cleared is
//! the next `LANES`: one load and one integer operation per vector of
//! columns, where f32 rows take one load; and rounding rows into words is
//! lane by lane, no shuffles. `LANES` is the score loops' vector width in
//! f32 lanes: four in wasm, eight on x86 (AVX-512 loops put two keys' eight
//! columns in one vector). Columns past the last whole run pair in order.
//! The layout is the process's own (recalled rows are remade after a
//! restore, never saved), so each target picks the one its loops read.

/// f32 lanes of the loops that read the runs (see the module documentation).
#[cfg(target_arch = "wasm32")]
pub const LANES: usize = 4;
#[cfg(not(target_arch = "wasm32"))]
pub const LANES: usize = 8;
/// Columns in one run.
pub const RUN: usize = 2 * LANES;

/// `used` key rows of `head_dim` bf16 columns each, `head_dim / 2` words a row in the run layout.
#[derive(Clone, Copy, Default)]
pub struct Bf16Keys<'a> {
    pub words: &'a [u32],
}

/// `x`'s bits with bf16's rounding added (nearest, ties to even; a NaN kept
/// a NaN): the bf16 is the upper half. What `half`'s conversion gives, in
/// integer operations a loop vectorizes.
#[inline(always)]
fn rounded(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        b | 0x0040_0000
    } else {
        b.wrapping_add(0x7FFF + ((b >> 16) & 1))
    }
}

/// One word: `low` and `high` rounded to bf16, in its low and high halves.
#[inline(always)]
fn word(low: f32, high: f32) -> u32 {
    (rounded(low) >> 16) | (rounded(high) & 0xFFFF_0000)
}

/// Rounds the f32 key rows `rows` (`[rows][head_dim]`) into `out`'s words in the run layout.
#[inline(always)]
pub fn pack_rows(rows: &[f32], head_dim: usize, out: &mut [u32]) {
    let whole = head_dim / RUN * RUN;
    for (row, packed) in rows.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim / 2)) {
        let (runs, tail) = packed.split_at_mut(whole / 2);
        for (run, words) in row[..whole].chunks_exact(RUN).zip(runs.chunks_exact_mut(LANES)) {
            let (low, high) = run.split_at(LANES);
            for j in 0..LANES {
                words[j] = word(low[j], high[j]);
            }
        }
        for (pair, w) in row[whole..].chunks_exact(2).zip(tail) {
            *w = word(pair[0], pair[1]);
        }
    }
}

/// Where column `c` of a row of `head_dim` columns sits: (word, high half).
#[inline(always)]
fn slot(c: usize, head_dim: usize) -> (usize, bool) {
    if c >= head_dim / RUN * RUN {
        return (c / 2, c % 2 == 1);
    }
    let (run, j) = (c / RUN, c % RUN);
    (run * LANES + j % LANES, j >= LANES)
}

impl Bf16Keys<'_> {
    /// The first `used` rows widened to f32, columns in order: what every loop scores.
    pub fn widen_rows(&self, head_dim: usize, used: usize) -> Vec<f32> {
        let mut rows = vec![0f32; used * head_dim];
        for (row, packed) in rows.chunks_exact_mut(head_dim).zip(self.words.chunks_exact(head_dim / 2)) {
            for (c, x) in row.iter_mut().enumerate() {
                let (w, high) = slot(c, head_dim);
                *x = f32::from_bits(if high { packed[w] & 0xFFFF_0000 } else { packed[w] << 16 });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The packing's rounding is `half`'s, NaNs and infinities included.
    #[test]
    fn rounding_is_halfs() {
        let mut x = 0x1234_5678u32;
        let specials = [0.0f32, -0.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, -f32::MAX, f32::INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE / 3.0];
        let randoms = (0..100_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f32::from_bits(x)
        });
        for v in specials.into_iter().chain(randoms) {
            let (ours, theirs) = ((rounded(v) >> 16) as u16, bf16::from_f32(v));
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan() && theirs.is_nan(), "{v}");
            } else {
                assert_eq!(ours, theirs.to_bits(), "{v} ({:#x})", v.to_bits());
            }
        }
    }

    /// Every column has a slot of its own, a run's word j holds columns j and LANES + j,
    /// and widening gives back what was packed (values bf16 holds exactly).
    #[test]
    fn the_layout_is_a_permutation_of_the_columns() {
        for hd in [4, 8, 16, 24, 64, 72] {
            let mut seen = vec![false; hd];
            for c in 0..hd {
                let (w, high) = slot(c, hd);
                let at = 2 * w + high as usize;
                assert!(!seen[at], "hd {hd}: column {c}");
                seen[at] = true;
            }
            let rows: Vec<f32> = (0..2 * hd).map(|i| i as f32).collect();
            let mut packed = vec![0u32; hd];
            pack_rows(&rows, hd, &mut packed);
            assert_eq!(Bf16Keys { words: &packed }.widen_rows(hd, 2), rows);
            if hd >= RUN {
                assert_eq!(packed[0], (bf16::from_f32(LANES as f32).to_bits() as u32) << 16);
            }
        }
    }
}
