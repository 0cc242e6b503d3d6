//! GGUF blocks of the formats whose values the kernels cannot read as stored
//! (Q5_0's split fifth bit, the K-quants' 256-value super-blocks with packed
//! six-bit scales) → 32-value [`Block32`]s: the values as four-bit nibbles or
//! signed bytes, one scale, one offset, Q6_K's two integer sub-scales. The
//! arithmetic is ggml's `dequantize_row_*` (ggml-quants.c), regrouped:
//! `value = (q · sub) · d + m`, where `d` and `m` are exact products (an f16
//! times a six- or eight-bit integer fits an f32's mantissa).
//!
//! [`for_each_block32`] decodes any format this way, in file order: the
//! WebGPU matrices are packed from it, so both backends read the same values,
//! scales and offsets.

use super::repack::f16_to_f32;

/// One 32-value block as the repacked layouts store it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Block32 {
    /// Four-bit formats: 16 bytes in the GGML order (byte `j`: value `j` in the
    /// low nibble, `j + 16` in the high one). Five-bit formats: 32 values 0..32.
    /// Byte formats: 32 values as i8.
    pub q: [u8; 32],
    pub d: f32,
    pub m: f32,
    /// Integer scales of values 0..16 and 16..32 (Q6_K; `[1, 1]` otherwise).
    pub sub: [i8; 2],
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Q5_0 (22 bytes: f16 `d`, 32 high bits, 16 bytes of low nibbles): the
/// unsigned values 0..32 and the offset `-16d` (`(q - 16)·d` regrouped, as Q4_0's `-8d`).
pub(super) fn q5_0(blk: &[u8]) -> Block32 {
    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    let qs = &blk[6..22];
    let d = f16_at(blk, 0);
    let mut out = Block32 { d, m: -16.0 * d, sub: [1, 1], ..Default::default() };
    for j in 0..32 {
        let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
        out.q[j] = low | (((qh >> j) & 1) as u8) << 4;
    }
    out
}

/// Scale and minimum `j` (0..8) of a K-quant's 12 packed bytes (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The eight sub-blocks' `(d · scale, -dmin · min)` of a Q4_K / Q5_K super-block.
fn k_scales(blk: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    std::array::from_fn(|j| {
        let (sc, mn) = scale_min_k4(j, &blk[4..16]);
        (d * sc as f32, -(dmin * mn as f32))
    })
}

/// Q4_K (144 bytes: f16 `d`, `dmin`, 12 scale bytes, 128 bytes of nibbles):
/// sub-block `2c` is the low nibbles of bytes `32c..32c+32`, `2c+1` their high nibbles.
pub(super) fn q4k(blk: &[u8], out: &mut [Block32; 8]) {
    let qs = &blk[16..144];
    for (s, (o, (d, m))) in out.iter_mut().zip(k_scales(blk)).enumerate() {
        let src = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let v = |l: usize| if s % 2 == 0 { src[l] & 0x0F } else { src[l] >> 4 };
        *o = Block32 { d, m, sub: [1, 1], ..Default::default() };
        for j in 0..16 {
            o.q[j] = v(j) | v(j + 16) << 4;
        }
    }
}

/// Q5_K (176 bytes: as Q4_K with 32 bytes of fifth bits before the nibbles):
/// values 0..32; bit `s` of high byte `l` is sub-block `s`'s value `l`.
pub(super) fn q5k(blk: &[u8], out: &mut [Block32; 8]) {
    let (qh, qs) = (&blk[16..48], &blk[48..176]);
    for (s, (o, (d, m))) in out.iter_mut().zip(k_scales(blk)).enumerate() {
        let src = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        *o = Block32 { d, m, sub: [1, 1], ..Default::default() };
        for l in 0..32 {
            let low = if s % 2 == 0 { src[l] & 0x0F } else { src[l] >> 4 };
            o.q[l] = low | ((qh[l] >> s) & 1) << 4;
        }
    }
}

/// Q6_K (210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8
/// scales, f16 `d`): `q - 32` as bytes, each 16 values with their own scale.
pub(super) fn q6k(blk: &[u8], out: &mut [Block32; 8]) {
    let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
    let d = f16_at(blk, 208);
    for (s, o) in out.iter_mut().enumerate() {
        *o = Block32 { d, m: 0.0, sub: [sc[2 * s] as i8, sc[2 * s + 1] as i8], ..Default::default() };
        for (i, q) in o.q.iter_mut().enumerate() {
            // Value v of the super-block: half n, quarter k of that half, lane l.
            let v = 32 * s + i;
            let (n, k, l) = (v / 128, (v % 128) / 32, v % 32);
            let byte = ql[64 * n + l + 32 * (k % 2)];
            let low = if k < 2 { byte & 0x0F } else { byte >> 4 };
            let high = (qh[32 * n + l] >> (2 * k)) & 3;
            *q = ((low | high << 4) as i8 - 32) as u8;
        }
    }
}

/// A GGUF block of a K-quant → its eight [`Block32`]s.
pub(super) fn k_quant(format: super::QFormat, blk: &[u8], out: &mut [Block32; 8]) {
    match format {
        super::QFormat::Q4K => q4k(blk, out),
        super::QFormat::Q5K => q5k(blk, out),
        _ => q6k(blk, out),
    }
}

/// Every 32-value block of `data` (GGUF blocks of `format`, a whole number of
/// them) in file order: `f(i, block)` for block `i` (row-major, `cols / 32`
/// per row). Q4_0, Q4_1 and Q8_0 keep their bytes (Q4_0's offset is `-8d`).
pub fn for_each_block32(format: super::QFormat, data: &[u8], mut f: impl FnMut(usize, &Block32)) {
    use super::QFormat;
    let bb = format.block_bytes();
    let mut subs = [Block32::default(); 8];
    for (i, blk) in data.chunks_exact(bb).enumerate() {
        let one = |d: f32, m: f32, q: &[u8]| {
            let mut b = Block32 { d, m, sub: [1, 1], ..Default::default() };
            b.q[..q.len()].copy_from_slice(q);
            b
        };
        match format {
            QFormat::Q4_0 => f(i, &one(f16_at(blk, 0), -8.0 * f16_at(blk, 0), &blk[2..18])),
            QFormat::Q4_1 => f(i, &one(f16_at(blk, 0), f16_at(blk, 2), &blk[4..20])),
            QFormat::Q8_0 => f(i, &one(f16_at(blk, 0), 0.0, &blk[2..34])),
            QFormat::Q5_0 => f(i, &q5_0(blk)),
            QFormat::Q4K | QFormat::Q5K | QFormat::Q6K => {
                k_quant(format, blk, &mut subs);
                for (k, b) in subs.iter().enumerate() {
                    f(8 * i + k, b);
                }
            }
        }
    }
}
