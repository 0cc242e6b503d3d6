//! Weight matrices on the GPU: GGUF blocks decoded at load into 32-value
//! blocks (`quant::for_each_block32`, the CPU kernels' values, scales and
//! offsets) and packed into a `u32` array of quants and a `u32` array of two
//! words per block, both in block-major order (block `b` of row `r` at
//! `b * rows + r`); split by rows into parts when a matrix is larger than the
//! device's largest storage binding. Per block, by [`Values`] kind:
//!
//! - four-bit (Q4_0, Q4_1, Q4_K): 4 words of nibbles in the GGML order (byte
//!   `j`: value `j` low, `j + 16` high); words: scale, offset (f32 bits);
//! - five-bit (Q5_0, Q5_K): those 4 words of low nibbles and a word of fifth
//!   bits (bit `j` for value `j`); words: scale, offset;
//! - bytes (Q8_0, Q6_K): 8 words of signed bytes; words: scale, the two
//!   integer sub-scales of values 0..16 and 16..32 as bytes 0 and 1 (Q8_0: 1, 1).

use super::GpuContext;
use crate::backend::cpu::quant::{for_each_block32, Block32, QFormat, Values, QK};
use crate::error::{Error, Result};
use candle_core::quantized::QTensor;
use wgpu::util::DeviceExt;

/// Rows `row_start..row_start + rows` of a matrix in their own buffers.
pub struct Part {
    pub row_start: usize,
    pub rows: usize,
    pub qs: wgpu::Buffer,
    pub ws: wgpu::Buffer,
}

/// A `[rows, cols]` weight in one of the formats the kernels read.
pub struct GpuMatrix {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<Part>,
}


/// Bytes of quants per block on the GPU.
pub(super) fn quant_bytes(f: QFormat) -> usize {
    match f.values() {
        Values::Four => 16,
        Values::Five => 20,
        Values::Eight => 32,
    }
}

/// A block's quant words and its two scale words, as the kernels read them.
fn pack(format: QFormat, blk: &Block32, qs: &mut [u32], ws: &mut [u32]) {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    ws[0] = blk.d.to_bits();
    match format.values() {
        Values::Four => {
            for (k, q) in qs.iter_mut().enumerate() {
                *q = word(&blk.q[4 * k..]);
            }
            ws[1] = blk.m.to_bits();
        }
        Values::Five => {
            let v = &blk.q;
            let mut fifth = 0u32;
            for (j, &x) in v.iter().enumerate() {
                fifth |= ((x >> 4) as u32 & 1) << j;
            }
            let nibbles: Vec<u8> = (0..16).map(|j| (v[j] & 0x0F) | (v[j + 16] & 0x0F) << 4).collect();
            for k in 0..4 {
                qs[k] = word(&nibbles[4 * k..]);
            }
            qs[4] = fifth;
            ws[1] = blk.m.to_bits();
        }
        Values::Eight => {
            for (k, q) in qs.iter_mut().enumerate() {
                *q = word(&blk.q[4 * k..]);
            }
            ws[1] = blk.sub[0] as u8 as u32 | (blk.sub[1] as u8 as u32) << 8;
        }
    }
}

impl GpuMatrix {
    /// The rows of `tensors` (same type and width) stacked into one matrix.
    pub fn from_tensors(ctx: &GpuContext, label: &str, tensors: &[&QTensor]) -> Result<Self> {
        let bad = |reason: String| Error::Tensor { name: label.to_string(), reason };
        let first = tensors.first().ok_or_else(|| bad("no tensor".into()))?;
        let format = QFormat::of(first.dtype()).ok_or_else(|| {
            Error::Unsupported(format!("the WebGPU backend has no kernel for {:?} weights ({label}); use the CPU backend", first.dtype()))
        })?;
        let cols = first.shape().dims2()?.1;
        if cols % format.block_values() != 0 {
            return Err(bad(format!("{cols} columns are not whole blocks")));
        }
        let mut rows = 0;
        let mut data = Vec::new();
        for t in tensors {
            let (r, c) = t.shape().dims2()?;
            if t.dtype() != first.dtype() || c != cols {
                return Err(bad("stacked tensors differ in type or width".into()));
            }
            rows += r;
            data.extend_from_slice(&t.data()?);
        }
        Self::from_blocks(ctx, label, format, rows, cols, &data)
    }

    /// Packs raw GGUF blocks (`rows * cols / block_values` of them).
    pub fn from_blocks(ctx: &GpuContext, label: &str, format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Result<Self> {
        let nb = cols / QK;
        let row_data = cols / format.block_values() * format.block_bytes();
        if !cols.is_multiple_of(format.block_values()) || Some(data.len()) != rows.checked_mul(row_data) {
            return Err(Error::Tensor { name: label.into(), reason: "block data does not match the shape".into() });
        }
        let qw = quant_bytes(format) / 4;
        let row_bytes = (nb * qw * 4) as u64;
        let max_rows = (ctx.info.max_storage_binding / row_bytes.max(1)).max(1) as usize;
        let max_rows = if max_rows >= rows { rows } else { (max_rows / 4 * 4).max(1) };
        let mut parts = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = max_rows.min(rows - row_start);
            let mut qs = vec![0u32; n * nb * qw];
            let mut ws = vec![0u32; n * nb * 2];
            // Block-major order ([block][row]): the threads of a workgroup, one per
            // row, read adjacent memory for the same block (coalesced loads).
            for_each_block32(format, &data[row_start * row_data..(row_start + n) * row_data], |i, blk| {
                let at = (i % nb) * n + i / nb;
                pack(format, blk, &mut qs[at * qw..(at + 1) * qw], &mut ws[2 * at..2 * at + 2]);
            });
            let upload = |contents: &[u32]| {
                ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(contents),
                    usage: wgpu::BufferUsages::STORAGE,
                })
            };
            parts.push(Part { row_start, rows: n, qs: upload(&qs), ws: upload(&ws) });
            row_start += n;
        }
        Ok(Self { format, rows, cols, parts })
    }

    /// Bytes the matrix occupies on the GPU.
    pub fn bytes(&self) -> usize {
        let nb = self.cols / QK;
        self.rows * nb * (quant_bytes(self.format) + 8)
    }
}
