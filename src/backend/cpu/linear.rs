//! A linear layer `y = x Wᵀ` over a GGUF weight: kvchat's own kernels for
//! Q4_0/Q4_1/Q8_0, candle's `QMatMul` for every other type.

use super::quant::{QActivations, QFormat, QMatrix};
use crate::error::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::cell::RefCell;
use std::sync::Arc;

pub enum Linear {
    Own(QMatrix),
    Candle(QMatMul),
}

thread_local! {
    static SCRATCH: RefCell<QActivations> = RefCell::new(QActivations::default());
}

impl Linear {
    pub fn new(w: Arc<QTensor>) -> Result<Self> {
        let format = match w.dtype() {
            GgmlDType::Q4_0 => Some(QFormat::Q4_0),
            GgmlDType::Q4_1 => Some(QFormat::Q4_1),
            GgmlDType::Q8_0 => Some(QFormat::Q8_0),
            _ => None,
        };
        if let (Some(f), Ok((rows, cols))) = (format, w.shape().dims2()) {
            if let Some(m) = QMatrix::from_blocks(f, rows, cols, &w.data()?) {
                return Ok(Linear::Own(m));
            }
        }
        Ok(Linear::Candle(QMatMul::from_arc(w)?))
    }

    /// `x`: `[T, cols]` → `[T, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Own(m) => {
                let (t, cols) = x.dims2()?;
                debug_assert_eq!(cols, m.cols);
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; t * m.rows];
                SCRATCH.with(|s| m.matmul(&xs, t, &mut s.borrow_mut(), &mut out));
                Ok(Tensor::from_vec(out, (t, m.rows), x.device())?)
            }
        }
    }
}
