//! AVX-512 VNNI kernels over the [`Q4Layout::Rows16`](super::Q4Layout::Rows16)
//! layout: sixteen rows per pass, each lane one row, so a block needs eight
//! `vpdpbusd` against broadcast activation bytes and no horizontal reduction;
//! up to eight tokens share each unpacked block. The float operations are the
//! other kernels', in their order, lane by lane. The activations are quantized
//! by `avx2::quantize` (this file has no `quantize` of its own).

use super::{Out, QActivations, QFormat, QMatrix, QK};
use std::arch::x86_64::*;
use std::ops::Range;

/// Rows `rows` of the product (`rows.start` a multiple of 16), sixteen rows per pass.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
    for g in rows.start / 16..rows.end.div_ceil(16) {
        let valid = (rows.end - 16 * g).min(16);
        let mut t = 0;
        // Fewer than eight tokens: token 0 alone first (streaming the group from
        // memory at decode speed), then the rest from cache: +12% at four tokens;
        // at eight, one pass with every token was faster (measured).
        if t_rows > 1 && t_rows < 8 {
            group::<1>(m, g, 0, valid, act, out);
            t = 1;
        }
        while t + 8 <= t_rows {
            group::<8>(m, g, t, valid, act, out);
            t += 8;
        }
        match t_rows - t {
            7 => group::<7>(m, g, t, valid, act, out),
            6 => group::<6>(m, g, t, valid, act, out),
            5 => group::<5>(m, g, t, valid, act, out),
            4 => group::<4>(m, g, t, valid, act, out),
            3 => group::<3>(m, g, t, valid, act, out),
            2 => group::<2>(m, g, t, valid, act, out),
            1 => group::<1>(m, g, t, valid, act, out),
            _ => {}
        }
    }
}

/// Σ over one block: lane `j` = row `16g+j`'s integer dot with the 32
/// activation bytes at `y` (the block's eight weight vectors in `w`).
#[inline(always)]
unsafe fn block(w: &[__m512i; 8], y: *const i8) -> __m512i {
    let b = |k: usize| _mm512_set1_epi32(std::ptr::read_unaligned(y.add(4 * k) as *const i32));
    let a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], b(0)), w[2], b(2)), w[4], b(4)), w[6], b(6));
    let c = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], b(1)), w[3], b(3)), w[5], b(5)), w[7], b(7));
    _mm512_add_epi32(a, c)
}

/// Rows `16g..16g+valid` against tokens `t0..t0+T`.
#[inline(always)]
unsafe fn group<const T: usize>(m: &QMatrix, g: usize, t0: usize, valid: usize, act: &QActivations, out: &Out) {
    let nb = m.cols / QK;
    let q8 = m.format == QFormat::Q8_0;
    let w = m.qs.as_ptr().add(g * nb * if q8 { 512 } else { 256 });
    let d16 = m.d.as_ptr().add(g * nb * 16);
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let wv: [__m512i; 8] = if q8 {
            let wb = w.add(b * 512);
            std::array::from_fn(|k| _mm512_loadu_si512(wb.add(64 * k) as *const _))
        } else {
            let wb = w.add(b * 256);
            let v: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(wb.add(64 * k) as *const _));
            std::array::from_fn(|k| if k % 2 == 0 { _mm512_and_si512(v[k / 2], mask) } else { _mm512_and_si512(_mm512_srli_epi16(v[k / 2], 4), mask) })
        };
        let dw = _mm512_loadu_ps(d16.add(b * 16));
        for (i, a) in acc.iter_mut().enumerate() {
            let t = t0 + i;
            let mut s = block(&wv, act.q.as_ptr().add(t * m.cols + b * QK));
            if q8 {
                // The weights were stored plus 128.
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * *act.qsum.get_unchecked(t * nb + b)));
            }
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*act.d.get_unchecked(t * nb + b)));
            *a = _mm512_add_ps(*a, _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale));
        }
    }
    let ys = if m.format == QFormat::Q4_1 { &act.s } else { &act.sx };
    let m16 = m.m.as_ptr().add(g * nb * 16);
    let keep: __mmask16 = if valid == 16 { 0xFFFF } else { (1u16 << valid) - 1 };
    for (i, a) in acc.into_iter().enumerate() {
        let t = t0 + i;
        let r = if q8 {
            a
        } else {
            let mut macc = _mm512_setzero_ps();
            for b in 0..nb {
                macc = _mm512_add_ps(macc, _mm512_mul_ps(_mm512_loadu_ps(m16.add(b * 16)), _mm512_set1_ps(*ys.get_unchecked(t * nb + b))));
            }
            _mm512_add_ps(a, macc)
        };
        _mm512_mask_storeu_ps(out.0.add(t * m.rows + 16 * g), keep, r);
    }
}
