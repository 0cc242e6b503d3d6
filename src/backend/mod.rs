//! Compute backends. `cpu` holds kvchat's own quantized matrix kernels (with
//! llama.cpp's exact activation quantization) behind a `Linear` that falls back
//! to candle's `QMatMul` for weight types it does not cover. `webgpu` holds
//! the GPU device, WGSL kernels and weight repacking.

pub mod cpu;
pub mod webgpu;
