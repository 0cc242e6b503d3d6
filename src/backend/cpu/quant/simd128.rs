//! wasm simd128 kernels over the [`Q4Layout::Lanes`](super::Q4Layout::Lanes)
//! layout (and Q8 blocks): decode passes take four weight rows against one
//! token, prefill passes one weight row against four tokens, so every unpacked
//! weight vector or loaded activation vector is used four times; the four
//! integer block sums are reduced into one vector and scaled with one
//! multiply. Also the activation quantization with simd128, and the helpers
//! the relaxed-SIMD kernels (`relaxed.rs`, Q4 blocks in the
//! [`Q4Layout::Rows4`](super::Q4Layout::Rows4) layout) share with these.

use super::{portable, Offset, Out, QActivations, QFormat, QMatrix, QK};
use core::arch::wasm32::*;
use std::ops::Range;

#[inline(always)]
pub(super) unsafe fn ld<T>(p: *const T) -> v128 {
    v128_load(p as *const v128)
}

/// `[Σa, Σb, Σc, Σd]` (shufps-shaped shuffles only).
#[inline(always)]
fn reduce4(a: v128, b: v128, c: v128, d: v128) -> v128 {
    let ab = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(a, b), i32x4_shuffle::<1, 3, 5, 7>(a, b));
    let cd = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(c, d), i32x4_shuffle::<1, 3, 5, 7>(c, d));
    i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(ab, cd), i32x4_shuffle::<1, 3, 5, 7>(ab, cd))
}

/// A Q4 block unpacked once, used against several activation rows.
type Q4 = [v128; 4];

/// The eight u16 lanes of a [`Q4Layout::Lanes`](super::Q4Layout::Lanes) block → 32 values as i16.
#[inline(always)]
unsafe fn unpack_q4(w: *const u8) -> Q4 {
    let v = ld(w);
    let mask = u16x8_splat(0x0F);
    [v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask), v128_and(u16x8_shr(v, 8), mask), u16x8_shr(v, 12)]
}

/// An unpacked Lanes block (row `r`, block `b`) with its fifth bits added
/// where the format has them: vector `k` holds values `8k..8k+8`, whose fifth
/// bits are byte `k` of the block's word.
#[inline(always)]
unsafe fn unpack_q4q5(m: &QMatrix, w: *const u8, r: usize, b: usize) -> Q4 {
    let v = unpack_q4(w);
    if m.qh.is_empty() {
        return v;
    }
    let h = *m.qh.get_unchecked(r * (m.cols / QK) + b);
    let bit = u16x8(1, 2, 4, 8, 16, 32, 64, 128);
    let sixteen = u16x8_splat(16);
    std::array::from_fn(|k| {
        let set = i16x8_eq(v128_and(u16x8_splat(((h >> (8 * k)) & 0xFF) as u16), bit), bit);
        v128_or(v[k], v128_and(set, sixteen))
    })
}

/// Integer dot of an unpacked Q4 block with activation row `t`, block `b` (4 partial lanes).
#[inline(always)]
unsafe fn dot_q4(w: &Q4, act: &QActivations, at: usize) -> v128 {
    dot16(w, act.q16.as_ptr().add(at))
}

/// A byte block (row `r`, block `b`) widened to 32 i16 lanes, Q6_K's values
/// times their integer scale (|q · scale| <= 32 · 128: no overflow).
#[inline(always)]
unsafe fn unpack_q8(m: &QMatrix, r: usize, b: usize) -> [v128; 4] {
    let w = m.qs.as_ptr().add((r * (m.cols / QK) + b) * 32);
    let (a, c) = (ld(w), ld(w.add(16)));
    let v = [i16x8_extend_low_i8x16(a), i16x8_extend_high_i8x16(a), i16x8_extend_low_i8x16(c), i16x8_extend_high_i8x16(c)];
    if !m.format.sub_scales() {
        return v;
    }
    let [lo, hi] = m.sub_scales(r, b);
    let (lo, hi) = (i16x8_splat(lo as i16), i16x8_splat(hi as i16));
    [i16x8_mul(v[0], lo), i16x8_mul(v[1], lo), i16x8_mul(v[2], hi), i16x8_mul(v[3], hi)]
}

/// Σ w·y over 32 i16 lanes (4 partial lanes).
#[inline(always)]
unsafe fn dot16(w: &[v128; 4], y: *const i16) -> v128 {
    i32x4_add(
        i32x4_add(i32x4_dot_i16x8(w[0], ld(y)), i32x4_dot_i16x8(w[1], ld(y.add(8)))),
        i32x4_add(i32x4_dot_i16x8(w[2], ld(y.add(16))), i32x4_dot_i16x8(w[3], ld(y.add(24)))),
    )
}

/// `rows` cut into blocks of whole groups of four rows of about 64 KiB of
/// weights, so that with more than four tokens (prefill, batched decode)
/// each block is read from memory once and stays in cache for every token
/// pass (the 28 MiB output projection was otherwise streamed once per four tokens).
pub(super) fn row_blocks(m: &QMatrix, rows: Range<usize>, t_rows: usize) -> impl Iterator<Item = Range<usize>> {
    let row_bytes = m.format.repacked_bytes(m.cols);
    let step = if t_rows <= 1 { rows.len().max(1) } else { ((64 << 10) / row_bytes.max(1)).max(4) / 4 * 4 };
    (rows.start..rows.end).step_by(step).map(move |r0| r0..(r0 + step).min(rows.end))
}

/// Rows `rows` of the product, row block by row block.
pub(super) fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    for block in row_blocks(m, rows, t_rows) {
        matmul_block(m, block, t_rows, act, out);
    }
}

/// Token passes over one row block. With several tokens the first pass takes
/// token 0 alone: a one-token pass stays as fast as decode while it streams
/// the block from memory, and the four-token passes then read it from cache
/// (four-token passes that also streamed it ran at about half their speed).
fn matmul_block(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    let mut t = 0;
    if t_rows > 1 {
        one_token(m, rows.clone(), 0, act, out);
        t = 1;
    }
    while t + 4 <= t_rows {
        for r in rows.clone() {
            // SAFETY: r < rows, t + 4 <= t_rows: every pointer stays inside the buffers.
            unsafe { row_x4(m, r, t, t_rows, act, out) };
        }
        t += 4;
    }
    while t < t_rows {
        one_token(m, rows.clone(), t, act, out);
        t += 1;
    }
}

fn one_token(m: &QMatrix, rows: Range<usize>, t: usize, act: &QActivations, out: &Out) {
    let mut r = rows.start;
    let q8 = m.format == QFormat::Q8_0;
    while r + 4 <= rows.end && r % 4 == 0 {
        // SAFETY: r + 3 < rows, t < t_rows.
        unsafe {
            if q8 {
                rows4_q8_x1(m, r / 4, t, act, out)
            } else {
                rows4_x1(m, r / 4, t, act, out)
            }
        };
        r += 4;
    }
    for r in r..rows.end {
        // SAFETY: as above.
        unsafe { out.set(t * m.rows + r, portable::dot_row(m, r, act.row(t))) };
    }
}

/// Rows `4g..4g+4` against token `t`.
#[inline(always)]
unsafe fn rows4_x1(m: &QMatrix, g: usize, t: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let q8 = m.format.bytes();
    let offset = m.format.offset();
    let bw = if q8 { 32 } else { 16 };
    let w = m.qs.as_ptr();
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let (yd, ys) = (act.d.as_ptr().add(t * nb), if offset == Offset::Rounded { act.s.as_ptr() } else { act.sx.as_ptr() }.add(t * nb));
    let mut acc = f32x4_splat(0.0);
    let mut macc = f32x4_splat(0.0);
    let row = |i: usize| w.add((4 * g + i) * nb * bw);
    let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
    for b in 0..nb {
        let at = t * m.cols + b * QK;
        let o = b * bw;
        let v = if q8 {
            let y = act.q16.as_ptr().add(at);
            let r = 4 * g;
            reduce4(dot16(&unpack_q8(m, r, b), y), dot16(&unpack_q8(m, r + 1, b), y), dot16(&unpack_q8(m, r + 2, b), y), dot16(&unpack_q8(m, r + 3, b), y))
        } else {
            let r = 4 * g;
            reduce4(
                dot_q4(&unpack_q4q5(m, w0.add(o), r, b), act, at),
                dot_q4(&unpack_q4q5(m, w1.add(o), r + 1, b), act, at),
                dot_q4(&unpack_q4q5(m, w2.add(o), r + 2, b), act, at),
                dot_q4(&unpack_q4q5(m, w3.add(o), r + 3, b), act, at),
            )
        };
        let scale = f32x4_mul(ld(d4.add(b * 4)), f32x4_splat(*yd.add(b)));
        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(v), scale));
        if offset != Offset::None {
            macc = f32x4_add(macc, f32x4_mul(ld(m.m.as_ptr().add((g * nb + b) * 4)), f32x4_splat(*ys.add(b))));
        }
    }
    let r = f32x4_add(acc, macc);
    v128_store(out.0.add(t * m.rows + 4 * g) as *mut v128, r);
}

/// [`rows4_x1`] for Q8_0 (bytes, no sub-scales, no offset term): the same
/// integer sums and float operations, the block's four activation vectors
/// loaded once for the four rows, and no per-block format tests.
#[inline(always)]
unsafe fn rows4_q8_x1(m: &QMatrix, g: usize, t: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let w = m.qs.as_ptr().add(4 * g * nb * 32);
    let d4 = m.d.as_ptr().add(g * nb * 4);
    let yd = act.d.as_ptr().add(t * nb);
    let y = act.q16.as_ptr().add(t * m.cols);
    let mut acc = f32x4_splat(0.0);
    for b in 0..nb {
        let yb = y.add(b * QK);
        let ys = [ld(yb), ld(yb.add(8)), ld(yb.add(16)), ld(yb.add(24))];
        let row = |i: usize| {
            let p = w.add((i * nb + b) * 32);
            let (lo, hi) = (ld(p), ld(p.add(16)));
            let v = [i16x8_extend_low_i8x16(lo), i16x8_extend_high_i8x16(lo), i16x8_extend_low_i8x16(hi), i16x8_extend_high_i8x16(hi)];
            i32x4_add(i32x4_add(i32x4_dot_i16x8(v[0], ys[0]), i32x4_dot_i16x8(v[1], ys[1])), i32x4_add(i32x4_dot_i16x8(v[2], ys[2]), i32x4_dot_i16x8(v[3], ys[3])))
        };
        let v = reduce4(row(0), row(1), row(2), row(3));
        let scale = f32x4_mul(ld(d4.add(b * 4)), f32x4_splat(*yd.add(b)));
        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(v), scale));
    }
    // `+ 0.0` as rows4_x1 adds its (empty) offset term: a -0.0 sum becomes +0.0 alike.
    v128_store(out.0.add(t * m.rows + 4 * g) as *mut v128, f32x4_add(acc, f32x4_splat(0.0)));
}

/// Row `r` against tokens `t0..t0+4` (of `t_rows`).
#[inline(always)]
unsafe fn row_x4(m: &QMatrix, r: usize, t0: usize, t_rows: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let q8 = m.format.bytes();
    let offset = m.format.offset();
    let bw = if q8 { 32 } else { 16 };
    let w = m.qs.as_ptr().add(r * nb * bw);
    let st = if offset == Offset::Rounded { act.st.as_ptr() } else { act.sxt.as_ptr() };
    let mut acc = f32x4_splat(0.0);
    let mut macc = f32x4_splat(0.0);
    for b in 0..nb {
        let at = t0 * m.cols + b * QK;
        let v = if q8 {
            let wv = unpack_q8(m, r, b);
            let y = act.q16.as_ptr().add(at);
            reduce4(dot16(&wv, y), dot16(&wv, y.add(m.cols)), dot16(&wv, y.add(2 * m.cols)), dot16(&wv, y.add(3 * m.cols)))
        } else {
            let wv = unpack_q4q5(m, w.add(b * 16), r, b);
            reduce4(dot_q4(&wv, act, at), dot_q4(&wv, act, at + m.cols), dot_q4(&wv, act, at + 2 * m.cols), dot_q4(&wv, act, at + 3 * m.cols))
        };
        let i = m.sidx(r, b);
        let scale = f32x4_mul(ld(act.dt.as_ptr().add(b * t_rows + t0)), f32x4_splat(*m.d.get_unchecked(i)));
        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(v), scale));
        if offset != Offset::None {
            macc = f32x4_add(macc, f32x4_mul(ld(st.add(b * t_rows + t0)), f32x4_splat(*m.m.get_unchecked(i))));
        }
    }
    let res = f32x4_add(acc, macc);
    out.set(t0 * m.rows + r, f32x4_extract_lane::<0>(res));
    out.set((t0 + 1) * m.rows + r, f32x4_extract_lane::<1>(res));
    out.set((t0 + 2) * m.rows + r, f32x4_extract_lane::<2>(res));
    out.set((t0 + 3) * m.rows + r, f32x4_extract_lane::<3>(res));
}

/// [`portable::quantize`] with simd128, four values per instruction (the
/// same operations as `avx2::quantize`).
pub(super) fn quantize(act: &mut QActivations, x: &[f32], t_rows: usize, cols: usize) {
    act.resize(t_rows, cols);
    let (half, nhalf) = (f32x4_splat(0.5), f32x4_splat(-0.5));
    for (b, xs) in x.chunks_exact(QK).enumerate() {
        // SAFETY: a chunk is 32 floats.
        let v: [v128; 8] = std::array::from_fn(|i| unsafe { v128_load(xs.as_ptr().add(4 * i) as *const v128) });
        // pmax is exact on magnitudes (no NaN in activations; abs(-0) is +0).
        let a: [v128; 8] = std::array::from_fn(|i| f32x4_abs(v[i]));
        let m = f32x4_pmax(f32x4_pmax(f32x4_pmax(a[0], a[1]), f32x4_pmax(a[2], a[3])), f32x4_pmax(f32x4_pmax(a[4], a[5]), f32x4_pmax(a[6], a[7])));
        let amax = f32x4_extract_lane::<0>(m).max(f32x4_extract_lane::<1>(m)).max(f32x4_extract_lane::<2>(m).max(f32x4_extract_lane::<3>(m)));
        let d = amax / 127.0;
        let id = f32x4_splat(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q: [v128; 8] = std::array::from_fn(|i| {
            let y = f32x4_mul(v[i], id);
            let t = i32x4_trunc_sat_f32x4(y);
            let f = f32x4_sub(y, f32x4_convert_i32x4(t));
            i32x4_add(i32x4_sub(t, f32x4_ge(f, half)), f32x4_le(f, nhalf))
        });
        let lo = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[0], q[1]), i16x8_narrow_i32x4(q[2], q[3]));
        let hi = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[4], q[5]), i16x8_narrow_i32x4(q[6], q[7]));
        // SAFETY: the 32 bytes of block b are inside `q` (sized above).
        unsafe {
            v128_store(act.q.as_mut_ptr().add(b * QK) as *mut v128, lo);
            v128_store(act.q.as_mut_ptr().add(b * QK + 16) as *mut v128, hi);
        }
        let s4 = i32x4_add(i32x4_add(i32x4_add(q[0], q[1]), i32x4_add(q[2], q[3])), i32x4_add(i32x4_add(q[4], q[5]), i32x4_add(q[6], q[7])));
        let sum = i32x4_extract_lane::<0>(s4) + i32x4_extract_lane::<1>(s4) + i32x4_extract_lane::<2>(s4) + i32x4_extract_lane::<3>(s4);
        act.set_scales(b, d, sum);
    }
}
