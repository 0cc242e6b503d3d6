//! The network: hyper-parameters, RoPE, the llama forward pass and its profile.

pub mod config;
pub mod llama;
pub mod profile;
pub mod rope;

pub use config::LlamaConfig;
pub use llama::Llama;
pub use profile::Profile;
