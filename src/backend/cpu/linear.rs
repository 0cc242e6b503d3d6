//! A linear layer `y = x Wᵀ` over a GGUF weight: kvchat's own kernels for
//! the formats of [`QFormat`], candle's `QMatMul` for every other type.

use super::quant::{QActivations, QFormat, QMatrix};
use crate::error::Result;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::sync::Arc;

pub enum Linear {
    Own(Arc<QMatrix>),
    Candle { mm: QMatMul, rows: usize, cols: usize },
}

impl Linear {
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = w.shape().dims2()?;
        if let Some(m) = own_matrix(&w)? {
            return Ok(Linear::Own(Arc::new(m)));
        }
        Ok(Linear::Candle { mm: QMatMul::from_arc(w)?, rows, cols })
    }

    pub fn rows(&self) -> usize {
        match self {
            Linear::Own(m) => m.rows,
            Linear::Candle { rows, .. } => *rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Linear::Own(m) => m.cols,
            Linear::Candle { cols, .. } => *cols,
        }
    }

    /// Reads the own kernels' weight bytes once ([`QMatrix::read_once`]);
    /// candle's tensors are not counted: `(0, 0)`.
    pub fn read_once(&self) -> (usize, u64) {
        match self {
            Linear::Own(m) => m.read_once(),
            Linear::Candle { .. } => (0, 0),
        }
    }

    /// `x`: `t` rows of `cols()` → `out`: `t` rows of `rows()`. Own kernels
    /// allocate nothing (the activations are quantized into `act`).
    pub fn forward_into(&self, x: &[f32], t: usize, act: &mut QActivations, out: &mut [f32]) -> Result<()> {
        match self {
            Linear::Own(m) => m.matmul(x, t, act, out),
            Linear::Candle { mm, rows, cols } => {
                let xt = Tensor::from_slice(x, (t, *cols), &Device::Cpu)?;
                let y = mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                out[..t * rows].copy_from_slice(&y);
            }
        }
        Ok(())
    }
}

/// [`Linear::forward_into`] of several layers over the same `x` (Q, K and V;
/// gate and up): one quantization and one threaded pass where every layer
/// has the own kernels, one layer after the other otherwise.
pub fn forward_many<const N: usize>(layers: [(&Linear, &mut [f32]); N], x: &[f32], t: usize, act: &mut QActivations) -> Result<()> {
    if layers.iter().all(|(layer, _)| matches!(layer, Linear::Own(_))) {
        let mats = layers.map(|(layer, out)| match layer {
            Linear::Own(m) => (&**m, &mut out[..t * m.rows]),
            Linear::Candle { .. } => unreachable!("checked above"),
        });
        QMatrix::matmul_many(mats, x, t, act);
        return Ok(());
    }
    for (layer, out) in layers {
        layer.forward_into(x, t, act, out)?;
    }
    Ok(())
}

/// Repacks a weight of a [`QFormat`] for the own kernels; `None` for other types.
pub fn own_matrix(w: &QTensor) -> Result<Option<QMatrix>> {
    let Some(format) = QFormat::of(w.dtype()) else { return Ok(None) };
    let Ok((rows, cols)) = w.shape().dims2() else { return Ok(None) };
    Ok(QMatrix::from_blocks(format, rows, cols, &w.data()?))
}
