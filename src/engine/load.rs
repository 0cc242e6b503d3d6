//! Loading: bytes → GGUF → config, tokenizer, chat template → weights on a
//! backend (a [`Runner`](super::runner::Runner)) and the KV cache, with the
//! memory check made before anything large is allocated.

use super::cpu_runner::CpuRunner;
use super::gpu_runner::GpuRunner;
use super::runner::Runner;
use super::{Engine, EngineOptions, LoadTimings};
use crate::backend::webgpu::GpuContext;
use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf, Metadata};
use crate::kv_cache::KvCacheConfig;
use crate::model::{GpuLlama, Llama, LlamaConfig};
use crate::tokenizer::{IncrementalEncoder, Tokenizer};
use candle_core::Device;
use std::sync::Arc;
use web_time::Instant;

/// A model file's bytes, borrowed, handed over, or read on demand from outside memory.
pub(super) enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    Outside(&'a dyn ByteSource),
}

impl Bytes<'_> {
    fn gguf(&self) -> Result<Gguf<'_>> {
        match self {
            Bytes::Borrowed(b) => Gguf::parse(b),
            Bytes::Owned(v) => Gguf::parse(v),
            Bytes::Outside(source) => Gguf::read(*source),
        }
    }
    fn into_vec(self) -> Result<Vec<u8>> {
        Ok(match self {
            Bytes::Borrowed(b) => b.to_vec(),
            Bytes::Owned(v) => v,
            Bytes::Outside(source) => {
                let len = usize::try_from(source.byte_len()).map_err(|_| Error::Memory("the file does not fit in memory".into()))?;
                let mut v = vec![0u8; len];
                source.read_at(0, &mut v)?;
                v
            }
        })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Engine {
    /// Loads a model from the bytes of a GGUF file.
    pub fn load(bytes: &[u8], opts: EngineOptions) -> Result<Self> {
        Self::load_on(Bytes::Borrowed(bytes), opts, None)
    }

    /// [`load`](Self::load) taking the bytes: they are freed before the KV
    /// cache is allocated, so the peak memory of loading is the file plus the
    /// weights, not the file plus the weights plus the cache (the wasm boundary
    /// uses this: wasm memory never shrinks, so its high-water mark is what counts).
    pub fn load_owned(bytes: Vec<u8>, opts: EngineOptions) -> Result<Self> {
        Self::load_on(Bytes::Owned(bytes), opts, None)
    }

    /// [`load`](Self::load) reading the file from `source` on demand (the
    /// browser's ArrayBuffer, outside wasm memory): only the header and one
    /// piece of a tensor at a time are copied in, so the peak memory of
    /// loading is the weights plus the header, never the whole file.
    pub fn load_from(source: &dyn ByteSource, opts: EngineOptions) -> Result<Self> {
        Self::load_on(Bytes::Outside(source), opts, None)
    }

    /// Loads a model onto the GPU of `ctx` (WebGPU kernels for the whole forward
    /// pass). The engine keeps the file's bytes: if the device is lost it moves
    /// to the CPU and rebuilds the cache from the token history.
    pub fn load_gpu(bytes: Vec<u8>, opts: EngineOptions, ctx: &GpuContext) -> Result<Self> {
        Self::load_on(Bytes::Owned(bytes), opts, Some(ctx))
    }

    fn load_on(bytes: Bytes, mut opts: EngineOptions, gpu: Option<&GpuContext>) -> Result<Self> {
        if opts.prefill_chunk == 0 {
            return Err(Error::InvalidOption("prefill_chunk must be at least 1".into()));
        }
        let mut load = LoadTimings::default();
        let t = Instant::now();
        let g = bytes.gguf()?;
        let cfg = LlamaConfig::from_gguf(&g)?;
        let cfg_vocab = cfg.vocab_size;
        let fingerprint = g.fingerprint()?;
        load.parse_ms = ms(t);
        if let Some(budget) = opts.kv_budget_bytes {
            opts.kv.window = KvCacheConfig::window_for_budget(budget, &cfg.windows(), cfg.kv_dim(), opts.kv.dtype);
        }
        opts.kv.validate()?;
        check_memory(&g, &cfg, &opts)?;
        // The cold tier's recall runs on the CPU only: a cache with one loads on the CPU.
        let fallback = (gpu.is_some() && opts.kv.cold.is_some()).then(|| "the cold KV tier (recall) runs on the CPU backend only; loaded on the CPU".to_string());
        let gpu = gpu.filter(|_| opts.kv.cold.is_none());
        let meta: &Metadata = &g;
        let text = || {
            let t = Instant::now();
            let tokenizer = Tokenizer::from_gguf(meta)?;
            let template = chat_template(meta, &tokenizer)?;
            Ok::<_, Error>((tokenizer, template, ms(t)))
        };
        let (runner, text) = match gpu {
            None => {
                // The tokenizer and the template are built on a helper while this
                // thread repacks the weights (with more than one thread; else first).
                let (model, text) = crate::backend::cpu::beside(
                    || {
                        let t = Instant::now();
                        Llama::load(&g, cfg, &Device::Cpu).map(|m| (m, ms(t)))
                    },
                    text,
                );
                // A bad vocabulary or template is reported before a bad tensor, as when they came first.
                let text = text?;
                let (model, weights_ms) = model?;
                // The file's bytes go before the cache comes (see `load_owned`).
                drop(g);
                drop(bytes);
                load.weights_ms = weights_ms;
                let t = Instant::now();
                let runner: Box<dyn Runner> = Box::new(CpuRunner::new(model, opts.kv)?);
                load.cache_ms = ms(t);
                (runner, text)
            }
            Some(ctx) => {
                let text = text()?;
                let t = Instant::now();
                let model = GpuLlama::load(&g, cfg, opts.kv, ctx)?;
                drop(g);
                load.weights_ms = ms(t);
                let runner: Box<dyn Runner> = Box::new(GpuRunner::new(model, Arc::new(bytes.into_vec()?))?);
                (runner, text)
            }
        };
        let (tokenizer, template, tokenizer_ms) = text;
        load.tokenizer_ms = tokenizer_ms;
        if tokenizer.vocab_size() != cfg_vocab {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!("{} tokens but the model has a vocabulary of {}", tokenizer.vocab_size(), cfg_vocab),
            });
        }
        Ok(Self {
            runner,
            in_flight: None,
            fallback,
            tokenizer: Arc::new(tokenizer),
            grammars: None,
            template,
            opts,
            last: Default::default(),
            encoder: IncrementalEncoder::default(),
            load,
            fingerprint,
        })
    }

    /// Moves to the CPU backend (the GPU device was lost): loads the weights
    /// from the kept bytes and rebuilds the cache by feeding its token history
    /// (the bounded cache evicts exactly as before), then runs the chunk that
    /// was in flight again, so its result can be taken as if nothing happened.
    /// The one recovery path of every GPU operation.
    pub(crate) fn recover_on_cpu(&mut self, why: &Error) -> Result<()> {
        let Some(bytes) = self.runner.model_bytes() else { return Err(Error::DeviceLost(why.to_string())) };
        let cfg = self.runner.config().clone();
        let mut history = self.runner.policy().tokens().to_vec();
        let redo = self.in_flight.take();
        if let Some(chunk) = &redo {
            history.truncate(history.len().saturating_sub(chunk.ids.len()));
        }
        let model = Llama::load(&Gguf::parse(&bytes)?, cfg, &Device::Cpu)?;
        self.runner = Box::new(CpuRunner::new(model, self.opts.kv)?);
        self.fallback = Some(format!("{why}; continuing on the CPU"));
        self.feed(&history)?;
        if let Some(chunk) = redo {
            self.submit(&chunk.ids, chunk.want)?;
        }
        Ok(())
    }
}

/// Refuses (before allocating) a model whose weights and cache exceed the budget.
fn check_memory(g: &Gguf, cfg: &LlamaConfig, opts: &EngineOptions) -> Result<()> {
    let kv_bytes = opts.kv.bytes_for(&cfg.windows(), cfg.kv_dim()) + opts.kv.cold_bytes_for(&cfg.windows(), cfg.n_head_kv, cfg.head_dim);
    let weight_bytes = Llama::estimate_bytes(g, cfg) as u128;
    if weight_bytes + kv_bytes > opts.memory_budget as u128 {
        return Err(Error::Memory(format!(
            "the weights ({} MiB) and a {}-token KV cache ({} MiB) exceed the {} MiB budget; use a smaller window",
            weight_bytes >> 20,
            opts.kv.window,
            kv_bytes >> 20,
            opts.memory_budget >> 20
        )));
    }
    Ok(())
}

/// The file's chat template, compiled once, if it has one.
fn chat_template(g: &Metadata, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    if g.metadata("tokenizer.chat_template").is_none() {
        return Ok(None);
    }
    let src = g.get_str("tokenizer.chat_template")?;
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("").to_string();
    Ok(Some(ChatTemplate::new(src, &text(tokenizer.bos()), &text(tokenizer.eos()))?))
}
