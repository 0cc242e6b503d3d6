//! The CPU backend: quantized linear layers and the element-wise kernels of
//! the forward pass, over plain slices.

pub mod linear;
pub mod ops;
pub mod quant;

pub use linear::Linear;
