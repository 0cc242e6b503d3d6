//! The portable kernels: the reference every SIMD kernel is tested against,
//! bit for bit, and the fallback of targets (and layouts) without one. The
//! float operations are the SIMD kernels' (and the WebGPU kernel's), in the
//! same order.

use super::activations::QRow;
use super::{Offset, Out, QActivations, QMatrix, QK};
use std::ops::Range;

/// Rows `rows` of the product, one row and one token at a time.
pub(super) fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    for r in rows {
        for t in 0..t_rows {
            // SAFETY: r < m.rows and t < t_rows index the caller's output.
            unsafe { out.set(t * m.rows + r, dot_row(m, r, act.row(t))) };
        }
    }
}

/// Row `r` against one activation row with the portable kernel: per block
/// the integer dot (four- and five-bit values unsigned, byte values signed;
/// Q6_K's two halves each times their integer scale), then the float
/// operations of every SIMD kernel (and the WebGPU kernel), in the same
/// order: `acc += isum * (d_w * d_a)`, the offsets (`m` against Q4_1's
/// rounded `s` or everyone else's exact `Σq·d`) summed apart and added last.
pub(super) fn dot_row(m: &QMatrix, r: usize, y: QRow) -> f32 {
    let nb = m.cols / QK;
    let offset = m.format.offset();
    let ys = if offset == Offset::Rounded { y.s } else { y.sx };
    let mut acc = 0f32;
    let mut macc = 0f32;
    for b in 0..nb {
        let i = m.sidx(r, b);
        let yb = &y.q[b * 32..b * 32 + 32];
        let sub = m.sub_scales(r, b);
        let mut half = [0i32; 2];
        for (j, &v) in yb.iter().enumerate() {
            let w = if m.format.bytes() { m.q8(r, b, j) as i32 } else { m.unsigned(r, b, j) as i32 };
            half[j / 16] += w * v as i32;
        }
        let sumi = half[0] * sub[0] + half[1] * sub[1];
        acc += sumi as f32 * (m.d[i] * y.d[b]);
        if offset != Offset::None {
            macc += m.m[i] * ys[b];
        }
    }
    acc + macc
}

/// The scalar quantization (the reference the SIMD ones are tested against;
/// [`QActivations::quantize_portable`] calls it):
/// llama.cpp's `quantize_row_q8_0` / `_q8_1` rounding.
pub(super) fn quantize(act: &mut QActivations, x: &[f32], t_rows: usize, cols: usize) {
    act.resize(t_rows, cols);
    for (b, xs) in x.chunks_exact(QK).enumerate() {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let qs = &mut act.q[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = round_half_away(v * id) as i8;
        }
        for &q in qs.iter() {
            sum += q as i32;
        }
        act.set_scales(b, d, sum);
    }
    act.widen(t_rows);
}

/// C's `roundf` (half away from zero) for |x| <= 127, without a libm call
/// so the quantization loop vectorizes (truncate, then step by the fraction).
#[inline(always)]
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let f = x - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_away_is_c_roundf_on_the_quantization_range() {
        let mut x = -127.0f32;
        while x <= 127.0 {
            for v in [x, x.next_up(), x.next_down()] {
                if v.abs() <= 127.0 {
                    assert_eq!(super::round_half_away(v), v.round() as i32, "{v}");
                }
            }
            x += 0.25;
        }
        for v in [0.49999997f32, -0.49999997, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 0.0, -0.0] {
            assert_eq!(super::round_half_away(v), v.round() as i32, "{v}");
        }
    }
}
