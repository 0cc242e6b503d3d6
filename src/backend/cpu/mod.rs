//! The CPU backend: quantized linear layers.

pub mod linear;
pub mod quant;

pub use linear::Linear;
