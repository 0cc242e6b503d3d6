//! kvchat: a small language model that runs in the browser.
//!
//! Data flows bytes → [`gguf`] → [`tokenizer`] and weights ([`model`]) → model
//! forward → [`kv_cache`] → [`sampler`] → text, orchestrated by [`engine`].
//! The wasm boundary lives in `wasm.rs` (wasm32 only), the values it sends in
//! [`protocol`]; the CLI in `src/bin`.

pub mod backend;
pub mod chat_template;
pub mod engine;
pub mod error;
mod fnv;
pub mod gguf;
pub mod kv_cache;
pub mod model;
#[cfg(any(test, target_arch = "wasm32"))]
mod page_allocator;
pub mod protocol;
pub mod sampler;
pub mod testing;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

/// Large blocks on whole pages of their own, fresh ones never written to clear them (see the module).
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: page_allocator::PageAllocator = page_allocator::PageAllocator;

pub use engine::batch::{Batch, BatchEvent, BatchOptions, BatchStats};
pub use chat_template::Message;
pub use engine::{Engine, EngineOptions, GenerateOptions, Generation, Prompt, Session, Step, StopReason};
pub use error::{Error, Result};
pub use kv_cache::{ColdBits, ColdConfig, ColdStats, KvCacheConfig, KvDType, KvStats, TokenTier};
pub use sampler::constraint::OutputFormat;
pub use sampler::SamplerConfig;
