//! Weight matrices on the GPU: GGUF blocks repacked at load into a `u32` array
//! of quants (bytes as in the file, so 4-byte aligned for WGSL) and an `f32`
//! array of (scale, offset) per block, both in block-major order (block `b` of
//! row `r` at `b * rows + r`); split by rows into parts when a matrix is larger
//! than the device's largest storage binding.

use super::GpuContext;
use crate::backend::cpu::quant::{QFormat, QK};
use crate::error::{Error, Result};
use candle_core::quantized::QTensor;
use half::f16;
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


/// Whether the WGSL kernels read a format (Q4_0, Q4_1, Q8_0).
pub fn on_gpu(f: QFormat) -> bool {
    matches!(f, QFormat::Q4_0 | QFormat::Q4_1 | QFormat::Q8_0)
}

/// Bytes of quants per block on the GPU.
pub(super) fn quant_bytes(f: QFormat) -> usize {
    if f == QFormat::Q8_0 {
        32
    } else {
        16
    }
}

impl GpuMatrix {
    /// The rows of `tensors` (same type and width) stacked into one matrix.
    pub fn from_tensors(ctx: &GpuContext, label: &str, tensors: &[&QTensor]) -> Result<Self> {
        let bad = |reason: String| Error::Tensor { name: label.to_string(), reason };
        let first = tensors.first().ok_or_else(|| bad("no tensor".into()))?;
        let format = QFormat::of(first.dtype()).filter(|f| on_gpu(*f)).ok_or_else(|| {
            Error::Unsupported(format!("the WebGPU backend has no kernel for {:?} weights ({label}); use the CPU backend", first.dtype()))
        })?;
        let cols = first.shape().dims2()?.1;
        if cols % QK != 0 {
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

    /// Repacks raw GGUF blocks (`rows * cols / 32` of them).
    pub fn from_blocks(ctx: &GpuContext, label: &str, format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Result<Self> {
        if !on_gpu(format) {
            return Err(Error::Unsupported(format!("the WebGPU backend has no kernel for {format:?} weights ({label}); use the CPU backend")));
        }
        let nb = cols / QK;
        let bb = format.block_bytes();
        if cols % QK != 0 || data.len() != rows * nb * bb {
            return Err(Error::Tensor { name: label.into(), reason: "block data does not match the shape".into() });
        }
        let qb = quant_bytes(format);
        let row_bytes = (nb * qb) as u64;
        let max_rows = (ctx.info.max_storage_binding / row_bytes.max(1)).max(1) as usize;
        let max_rows = if max_rows >= rows { rows } else { (max_rows / 4 * 4).max(1) };
        let mut parts = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = max_rows.min(rows - row_start);
            let blocks = &data[row_start * nb * bb..(row_start + n) * nb * bb];
            let mut qs = Vec::with_capacity(n * nb * qb);
            let mut ws = Vec::with_capacity(n * nb * 2);
            // Block-major order ([block][row]): the threads of a workgroup, one per
            // row, read adjacent memory for the same block (coalesced loads).
            let order = (0..nb).flat_map(|b| (0..n).map(move |r| (r * nb + b) * bb));
            for at in order {
                let blk = &blocks[at..at + bb];
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                match format {
                    QFormat::Q4_0 => {
                        ws.extend_from_slice(&[d, -8.0 * d]);
                        qs.extend_from_slice(&blk[2..18]);
                    }
                    QFormat::Q4_1 => {
                        ws.extend_from_slice(&[d, f16::from_le_bytes([blk[2], blk[3]]).to_f32()]);
                        qs.extend_from_slice(&blk[4..20]);
                    }
                    _ => {
                        ws.extend_from_slice(&[d, 0.0]);
                        qs.extend_from_slice(&blk[2..34]);
                    }
                }
            }
            let qs = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &qs,
                usage: wgpu::BufferUsages::STORAGE,
            });
            let ws = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&ws),
                usage: wgpu::BufferUsages::STORAGE,
            });
            parts.push(Part { row_start, rows: n, qs, ws });
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
