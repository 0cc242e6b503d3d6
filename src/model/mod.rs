//! The network: hyper-parameters, RoPE, the llama forward pass on the CPU
//! (`llama`) and on the GPU (`gpu`), and its profile.

pub mod block;
pub mod config;
pub mod gpu;
pub mod llama;
pub mod profile;
pub mod rope;
pub mod tensors;

pub use block::{BlockSpec, BlockSupport};
pub use config::LlamaConfig;
pub use gpu::GpuLlama;
pub use llama::Llama;
pub use profile::Profile;
