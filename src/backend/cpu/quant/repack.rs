//! Repacking at load: GGUF blocks → a [`QMatrix`]'s scale, offset and quant
//! arrays, the quants shuffled into the [`Q4Layout`] the kernels read.

use super::{Q4Layout, QFormat, QMatrix, QK};
use half::f16;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// f16 bits → f32 through a table (256 KiB, built once): loading converts two
/// scales per 32 weights, and the software conversion was half the load time.
pub fn f16_to_f32(bits: u16) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())[bits as usize]
}

impl QMatrix {
    /// Repacks raw GGUF block data for this target's kernels.
    /// `data.len()` must be `rows * cols / 32 * block_bytes`.
    pub fn from_blocks(format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        Self::from_blocks_with_layout(format, rows, cols, data, Q4Layout::native())
    }

    /// As [`from_blocks`](Self::from_blocks) with an explicit Q4 layout (tests compare them).
    pub fn from_blocks_with_layout(format: QFormat, rows: usize, cols: usize, data: &[u8], layout: Q4Layout) -> Option<Self> {
        if cols % QK != 0 {
            return None;
        }
        let nb = rows * cols / QK;
        let bb = format.block_bytes();
        if data.len() != nb * bb {
            return None;
        }
        let qlen = if format == QFormat::Q8_0 { 32 } else { 16 };
        let nbr = cols / QK;
        // Every layout keeps the scales of a group of rows together (`[rows / G][block][G]`,
        // rows padded to whole groups with zero scales): the kernels take a group per pass.
        let gr = layout.group_rows();
        let slots = rows.div_ceil(gr) * gr * nbr;
        let mut d = vec![0f32; slots];
        let mut m = vec![0f32; if format == QFormat::Q8_0 { 0 } else { slots }];
        let padded = layout == Q4Layout::Rows16 || (layout == Q4Layout::Rows4 && format != QFormat::Q8_0);
        // One pass over the file's blocks, each written straight to its place.
        let mut qs = vec![0u8; if padded { slots } else { nb } * qlen];
        for (i, blk) in data.chunks_exact(bb).enumerate() {
            let (r, b) = (i / nbr, i % nbr);
            let at = ((r / gr) * nbr + b) * gr + r % gr;
            let scale = f16_at(blk, 0);
            d[at] = scale;
            let nibbles = match format {
                QFormat::Q4_0 => {
                    m[at] = -8.0 * scale;
                    &blk[2..18]
                }
                QFormat::Q4_1 => {
                    m[at] = f16_at(blk, 2);
                    &blk[4..20]
                }
                QFormat::Q8_0 if layout == Q4Layout::Rows16 => {
                    q8_rows16(&mut qs, ((r / 16) * nbr + b) * 512 + 4 * (r % 16), &blk[2..34]);
                    continue;
                }
                QFormat::Q8_0 => {
                    qs[i * 32..i * 32 + 32].copy_from_slice(&blk[2..34]);
                    continue;
                }
            };
            match layout {
                Q4Layout::Ggml => qs[i * 16..i * 16 + 16].copy_from_slice(nibbles),
                Q4Layout::Rows4 | Q4Layout::Rows16 => interleave_rows(&mut qs, ((r / gr) * nbr + b) * 16 * gr + 4 * (r % gr), 4 * gr, nibbles),
                Q4Layout::Lanes => to_lanes(&mut qs[i * 16..i * 16 + 16], nibbles),
            }
        }
        Some(Self { format, rows, cols, layout, d, m, qs })
    }
}

/// A Q8 block of one row in [`Q4Layout::Rows16`]: byte `4j + i` of 64-byte
/// vector `k` is row `16g+j`'s value `4k+i` plus 128; `base` is the row's
/// first byte in the group's block.
fn q8_rows16(qs: &mut [u8], base: usize, vals: &[u8]) {
    for (j, &v) in vals.iter().enumerate() {
        qs[base + 64 * (j / 4) + j % 4] = v ^ 0x80;
    }
}

/// A Q4 block of one row in [`Q4Layout::Rows4`] / [`Q4Layout::Rows16`]: four
/// vectors of `v` bytes (`4 * gr`) from `base`, the row's first byte.
fn interleave_rows(qs: &mut [u8], base: usize, v: usize, n: &[u8]) {
    // Byte i of vector k: values 8k+i (low) and 8k+4+i (high); GGUF byte
    // l holds values l (low nibble) and l+16 (high nibble).
    for i in 0..4 {
        qs[base + i] = (n[i] & 0x0F) | (n[4 + i] << 4);
        qs[base + v + i] = (n[8 + i] & 0x0F) | (n[12 + i] << 4);
        qs[base + 2 * v + i] = (n[i] >> 4) | (n[4 + i] & 0xF0);
        qs[base + 3 * v + i] = (n[8 + i] >> 4) | (n[12 + i] & 0xF0);
    }
}

/// A Q4 block in [`Q4Layout::Lanes`] (16 bytes at `q`).
fn to_lanes(q: &mut [u8], nibbles: &[u8]) {
    // Lane l: values l, l+8 (low nibbles of bytes l, l+8), l+16, l+24 (their high nibbles).
    for l in 0..8 {
        let (a, b) = (nibbles[l], nibbles[l + 8]);
        let lane = (a & 0x0F) as u16 | ((b & 0x0F) as u16) << 4 | ((a >> 4) as u16) << 8 | ((b >> 4) as u16) << 12;
        q[2 * l..2 * l + 2].copy_from_slice(&lane.to_le_bytes());
    }
}
