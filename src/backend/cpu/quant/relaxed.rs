//! wasm relaxed-SIMD kernels over the [`Q4Layout::Rows4`](super::Q4Layout::Rows4)
//! layout (four- and five-bit blocks, the fifth bits added after unpacking;
//! Q8_0 blocks as their two nibbles; Q6_K's byte blocks take the simd128 kernels):
//! `i16x8.relaxed_dot_i8x16_i7x16_s` with the nibbles as the 7-bit operand
//! (pmaddubsw on x86) against four activation bytes splatted to every lane
//! leaves each of four rows' sums in its own pair of i16 lanes: no widening of
//! the weights and no horizontal reduction, one pairwise widening add per block.
//! Four rows × one token per pass over weights streamed from memory, eight
//! rows (two groups sharing each splatted activation word) × four tokens per
//! pass over weights in cache.

use super::simd128::{ld, row_blocks};
use super::{Offset, Out, QActivations, QMatrix, QK};
use core::arch::wasm32::*;
use std::ops::Range;

/// Q4 rows in the [`Q4Layout::Rows4`](super::Q4Layout::Rows4) layout: groups
/// of four rows against four tokens at a time, then one token at a time.
pub(super) fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    for block in row_blocks(m, rows, t_rows) {
        rows4_block_pass(m, block, t_rows, act, out);
    }
}

fn rows4_block_pass(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    let groups = rows.start / 4..rows.end.div_ceil(4);
    // Token 0 alone first (see `simd128::matmul_block`), then four tokens per pass, then the rest at once.
    let mut t = 0;
    if t_rows > 1 {
        tokens_pass::<1>(m, groups.clone(), 0, act, out);
        t = 1;
    }
    while t + 4 <= t_rows {
        tokens_pass::<4>(m, groups.clone(), t, act, out);
        t += 4;
    }
    match t_rows - t {
        3 => tokens_pass::<3>(m, groups, t, act, out),
        2 => tokens_pass::<2>(m, groups, t, act, out),
        1 => tokens_pass::<1>(m, groups, t, act, out),
        _ => {}
    }
}

/// Groups `groups` of four rows against tokens `t..t + T`: in four-token
/// passes (the weights in cache), four-bit blocks two groups at a time
/// ([`g8_q4_xn`]); the rest, an odd last group and the passes that stream
/// the weights from memory one group at a time (pairs there doubled the
/// decode matmuls' time in Chrome).
#[inline(always)]
fn tokens_pass<const T: usize>(m: &QMatrix, groups: Range<usize>, t: usize, act: &QActivations, out: &Out) {
    let mut g = groups.start;
    if T == 4 && !m.format.bytes() && m.qh.is_empty() {
        while g + 2 <= groups.end {
            // SAFETY: g + 1 < rows.div_ceil(4) (the layout pads to whole groups), t + T <= t_rows.
            unsafe { g8_q4_xn::<T>(m, g, t, act, out) };
            g += 2;
        }
    }
    for g in g..groups.end {
        // SAFETY: g < rows.div_ceil(4), t + T <= t_rows.
        unsafe { g4_xn::<T>(m, g, t, act, out) };
    }
}

/// Σ over one Rows4 block: lane `j` = row `4g+j`'s integer dot with the 32
/// activation bytes at `y`. Each relaxed dot (pmaddubsw on x86) leaves i16 pair
/// sums, |pair| <= 2 · 15 · 127 for four-bit values (2 · 31 · 127 for five-bit
/// ones); eight of them (four for five-bit values) are added in i16 before one
/// widening pairwise add (pmaddwd) per block: |sum| <= 30,480 (31,496) < 2^15,
/// so nothing saturates or wraps and the integer is exactly the other kernels'
/// (with an activation byte of -128 the bounds are 30,720 and 31,744: still below).
#[inline(always)]
unsafe fn rows4_block(w: &[v128; 8], y: *const i8, five_bit: bool) -> v128 {
    let sp = |o: usize| v128_load32_splat(y.add(o) as *const u32);
    let dot = |k: usize| i16x8_relaxed_dot_i8x16_i7x16(sp(4 * k), w[k]);
    let low = i16x8_add(i16x8_add(dot(0), dot(1)), i16x8_add(dot(2), dot(3)));
    let high = i16x8_add(i16x8_add(dot(4), dot(5)), i16x8_add(dot(6), dot(7)));
    if five_bit {
        i32x4_add(i32x4_extadd_pairwise_i16x8(low), i32x4_extadd_pairwise_i16x8(high))
    } else {
        i32x4_extadd_pairwise_i16x8(i16x8_add(low, high))
    }
}

/// The four vectors of a Rows4 block → eight vectors of values 0..16 (low, high nibbles).
#[inline(always)]
unsafe fn rows4_unpack(w: *const u8) -> [v128; 8] {
    let mask = u8x16_splat(0x0F);
    let nib = |k: usize| {
        let v = ld(w.add(16 * k));
        (v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask))
    };
    let ((a, b), (c, d), (e, f), (g, h)) = (nib(0), nib(1), nib(2), nib(3));
    [a, b, c, d, e, f, g, h]
}

/// Adds a Rows4 block's fifth bits (the four rows' words, `h`) to its
/// unpacked values: vector `2k` takes bit `k` of each byte, `2k + 1` bit `4 + k`.
#[inline(always)]
unsafe fn add_fifth_bits(w: &mut [v128; 8], h: v128) {
    let sixteen = u8x16_splat(0x10);
    for k in 0..4u32 {
        w[2 * k as usize] = v128_or(w[2 * k as usize], v128_and(i8x16_shl(h, 4 - k), sixteen));
        w[2 * k as usize + 1] = v128_or(w[2 * k as usize + 1], v128_and(u8x16_shr(h, k), sixteen));
    }
}

/// Stores rows `4g..4g+4` of token `t` (fewer past the last row).
#[inline(always)]
unsafe fn store4(m: &QMatrix, g: usize, t: usize, v: v128, out: &Out) {
    let at = t * m.rows + 4 * g;
    if 4 * g + 4 <= m.rows {
        v128_store(out.0.add(at) as *mut v128, v);
    } else {
        let lanes: [f32; 4] = core::mem::transmute(v);
        for (j, x) in lanes.into_iter().enumerate().take(m.rows - 4 * g) {
            out.set(at + j, x);
        }
    }
}

/// The offset term of rows `4g..4g+4` for token `t`: Σ_b m · s (Q4_1's
/// rounded `s`, Q4_0's exact `Σq·d`), summed in block order as the other kernels do.
#[inline(always)]
unsafe fn rows4_offset(m: &QMatrix, g: usize, t: usize, act: &QActivations) -> v128 {
    let nb = m.cols / QK;
    let m4 = m.m.as_ptr().add(g * nb * 4);
    let ys = if m.format.offset() == Offset::Rounded { act.s.as_ptr() } else { act.sx.as_ptr() }.add(t * nb);
    let mut macc = f32x4_splat(0.0);
    for b in 0..nb {
        macc = f32x4_add(macc, f32x4_mul(ld(m4.add(b * 4)), f32x4_splat(*ys.add(b))));
    }
    macc
}

/// Σ over one Rows4 Q8_0 block (128 bytes at `w`, each value `q + 128`):
/// lane `j` = row `4g+j`'s integer dot with the 32 activation bytes at `y`.
/// Each byte `u = 16h + l` is dotted as its two nibbles (the 7-bit operand
/// holds 0..128 only), each nibble's eight dots summed in i16 as in
/// [`rows4_block`] (|sum| <= 8 · 2 · 15 · 128 = 30,720 < 2^15), then
/// `16 Σh·y + Σl·y - 128 Σy = Σq·y`: exactly the other kernels' integer.
#[inline(always)]
unsafe fn rows4_q8_block(w: *const u8, y: *const i8, y_sum: i32) -> v128 {
    let mask = u8x16_splat(0x0F);
    let (mut low, mut high) = (i16x8_splat(0), i16x8_splat(0));
    for k in 0..8 {
        let v = ld(w.add(16 * k));
        let a = v128_load32_splat(y.add(4 * k) as *const u32);
        low = i16x8_add(low, i16x8_relaxed_dot_i8x16_i7x16(a, v128_and(v, mask)));
        high = i16x8_add(high, i16x8_relaxed_dot_i8x16_i7x16(a, v128_and(u16x8_shr(v, 4), mask)));
    }
    let sum = i32x4_add(i32x4_shl(i32x4_extadd_pairwise_i16x8(high), 4), i32x4_extadd_pairwise_i16x8(low));
    i32x4_sub(sum, i32x4_splat(128 * y_sum))
}

/// Rows `4g..4g+4` of a Rows4 Q8_0 matrix against tokens `t0..t0+T` (the
/// block's 128 bytes are read from memory by the first token, from cache by the rest).
#[inline(always)]
unsafe fn g4_q8_xn<const T: usize>(m: &QMatrix, g: usize, t0: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let w = m.qs.as_ptr().add(g * nb * 128);
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let y = act.q.as_ptr().add(t0 * m.cols);
    let (yd, ysum) = (act.d.as_ptr().add(t0 * nb), act.qsum.as_ptr().add(t0 * nb));
    let mut acc = [f32x4_splat(0.0); T];
    for b in 0..nb {
        let dw = ld(d4.add(b * 4));
        for (i, a) in acc.iter_mut().enumerate() {
            let v = rows4_q8_block(w.add(b * 128), y.add(i * m.cols + b * QK), *ysum.add(i * nb + b));
            *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(v), f32x4_mul(dw, f32x4_splat(*yd.add(i * nb + b)))));
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        store4(m, g, t0 + i, a, out);
    }
}

/// Rows `4g..4g+4` (Rows4 layout) against tokens `t0..t0+T` (T = 4 in prefill
/// and batched passes, 1 for the rest): each block unpacked once for all T.
#[inline(always)]
unsafe fn g4_xn<const T: usize>(m: &QMatrix, g: usize, t0: usize, act: &QActivations, out: &Out) {
    if m.format.bytes() {
        return g4_q8_xn::<T>(m, g, t0, act, out);
    }
    if m.qh.is_empty() {
        return g4_q4_xn::<T>(m, g, t0, act, out);
    }
    let nb = m.cols / QK;
    let w = m.qs.as_ptr().add(g * nb * 64);
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let y = act.q.as_ptr().add(t0 * m.cols);
    let yd = act.d.as_ptr().add(t0 * nb);
    let five_bit = !m.qh.is_empty();
    let mut acc = [f32x4_splat(0.0); T];
    for b in 0..nb {
        let mut wv = rows4_unpack(w.add(b * 64));
        if five_bit {
            add_fifth_bits(&mut wv, ld(m.qh.as_ptr().add((g * nb + b) * 4)));
        }
        let dw = ld(d4.add(b * 4));
        for (i, a) in acc.iter_mut().enumerate() {
            let v = rows4_block(&wv, y.add(i * m.cols + b * QK), five_bit);
            *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(v), f32x4_mul(dw, f32x4_splat(*yd.add(i * nb + b)))));
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        store4(m, g, t0 + i, f32x4_add(a, rows4_offset(m, g, t0 + i, act)), out);
    }
}

/// [`g4_xn`] for four-bit blocks, packed vector by packed vector: each of
/// the block's four vectors is split into its two nibble vectors and dotted
/// against every token before the next is loaded, each token's eight dots
/// summed in one i16 accumulator (the bound of [`rows4_block`]; integer
/// sums, so the order does not change them), then widened once per block.
/// Fewer vectors live at once than with the block unpacked whole.
#[inline(always)]
unsafe fn g4_q4_xn<const T: usize>(m: &QMatrix, g: usize, t0: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let w = m.qs.as_ptr().add(g * nb * 64);
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let y = act.q.as_ptr().add(t0 * m.cols);
    let yd = act.d.as_ptr().add(t0 * nb);
    let mask = u8x16_splat(0x0F);
    let mut acc = [f32x4_splat(0.0); T];
    for b in 0..nb {
        let mut sums = [i16x8_splat(0); T];
        for k in 0..4 {
            let v = ld(w.add(b * 64 + 16 * k));
            let (low, high) = (v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask));
            for (i, s) in sums.iter_mut().enumerate() {
                let yk = y.add(i * m.cols + b * QK + 8 * k);
                let a = i16x8_relaxed_dot_i8x16_i7x16(v128_load32_splat(yk as *const u32), low);
                let c = i16x8_relaxed_dot_i8x16_i7x16(v128_load32_splat(yk.add(4) as *const u32), high);
                *s = i16x8_add(*s, i16x8_add(a, c));
            }
        }
        let dw = ld(d4.add(b * 4));
        for (i, a) in acc.iter_mut().enumerate() {
            let v = i32x4_extadd_pairwise_i16x8(sums[i]);
            *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(v), f32x4_mul(dw, f32x4_splat(*yd.add(i * nb + b)))));
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        store4(m, g, t0 + i, f32x4_add(a, rows4_offset(m, g, t0 + i, act)), out);
    }
}

/// [`g4_q4_xn`] for two groups of four rows (`g`, `g + 1`) at once: each
/// splatted activation word is dotted with both groups' nibbles.
#[inline(always)]
unsafe fn g8_q4_xn<const T: usize>(m: &QMatrix, g: usize, t0: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let w0 = m.qs.as_ptr().add(g * nb * 64);
    let w1 = w0.add(nb * 64);
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let y = act.q.as_ptr().add(t0 * m.cols);
    let yd = act.d.as_ptr().add(t0 * nb);
    let mask = u8x16_splat(0x0F);
    let mut acc = [[f32x4_splat(0.0); T]; 2];
    for b in 0..nb {
        let mut sums = [[i16x8_splat(0); T]; 2];
        for k in 0..4 {
            let (v0, v1) = (ld(w0.add(b * 64 + 16 * k)), ld(w1.add(b * 64 + 16 * k)));
            let (low0, high0) = (v128_and(v0, mask), v128_and(u16x8_shr(v0, 4), mask));
            let (low1, high1) = (v128_and(v1, mask), v128_and(u16x8_shr(v1, 4), mask));
            for i in 0..T {
                let yk = y.add(i * m.cols + b * QK + 8 * k);
                let (ya, yb) = (v128_load32_splat(yk as *const u32), v128_load32_splat(yk.add(4) as *const u32));
                let s0 = i16x8_add(i16x8_relaxed_dot_i8x16_i7x16(ya, low0), i16x8_relaxed_dot_i8x16_i7x16(yb, high0));
                let s1 = i16x8_add(i16x8_relaxed_dot_i8x16_i7x16(ya, low1), i16x8_relaxed_dot_i8x16_i7x16(yb, high1));
                sums[0][i] = i16x8_add(sums[0][i], s0);
                sums[1][i] = i16x8_add(sums[1][i], s1);
            }
        }
        for (j, (acc, sums)) in acc.iter_mut().zip(&sums).enumerate() {
            let dw = ld(d4.add((j * nb + b) * 4));
            for (i, a) in acc.iter_mut().enumerate() {
                let v = i32x4_extadd_pairwise_i16x8(sums[i]);
                *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(v), f32x4_mul(dw, f32x4_splat(*yd.add(i * nb + b)))));
            }
        }
    }
    for (j, acc) in acc.into_iter().enumerate() {
        for (i, a) in acc.into_iter().enumerate() {
            store4(m, g + j, t0 + i, f32x4_add(a, rows4_offset(m, g + j, t0 + i, act)), out);
        }
    }
}
