//! The WebGPU backend: kvchat's own WGSL kernels (`shaders/*.wgsl`) driven
//! through `wgpu` — WebGPU in the browser, Vulkan/Metal/DX12 natively (Mesa's
//! lavapipe in the tests). This module owns the device, the pipelines, the
//! typed uniforms and one pass constructor per kernel, and the weight repacking; the forward pass that sequences the kernels lives in
//! `model::gpu` and the cache policy stays in `kv_cache` (the GPU only stores).
//!
//! Everything a kernel needs is f32 or packed integers: no kernel requires
//! `shader-f16` (an f16 KV cache packs two halves per u32 with `pack2x16float`).

pub mod context;
pub mod kernels;
pub mod matrix;
pub mod ops;
pub mod probe;
pub mod uniforms;

pub use context::{AdapterInfo, GpuContext};
pub use kernels::Kernels;
pub use matrix::GpuMatrix;
