//! The network: hyper-parameters, RoPE, and the llama forward pass.

pub mod config;
pub mod llama;
pub mod rope;

pub use config::LlamaConfig;
pub use llama::Llama;
