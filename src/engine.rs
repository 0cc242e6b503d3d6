//! The engine: bytes in, text out. It ties the GGUF, tokenizer, chat template,
//! model, KV cache and sampler together, reuses the cached prefix between
//! requests, streams text pieces to a callback and keeps statistics.
//!
//! Every error leaves the engine usable: a failure inside the forward pass
//! empties the cache (the next request re-prefills), everything else is
//! checked before the cache is touched.

use crate::chat_template::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCache, KvCacheConfig, KvDType, KvStats};
use crate::model::profile::Op;
use crate::backend::webgpu::{AdapterInfo, GpuContext};
use crate::model::gpu::{GpuOutput, Readback, GPU_MAX_CHUNK, GPU_MAX_PENALTY_IDS, GPU_TOP_K};
use crate::model::{GpuLlama, Llama, LlamaConfig, Profile};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{IncrementalEncoder, StreamDecoder, Tokenizer};
use crate::backend::cpu::ops;
use candle_core::Device;
use web_time::Instant;

/// Options fixed when the model is loaded.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// KV capacity in tokens, sinks and storage type.
    pub kv: KvCacheConfig,
    /// If set, the window is derived from this many bytes of K/V storage instead of `kv.window`.
    pub kv_budget_bytes: Option<usize>,
    /// Largest number of prompt tokens run through the network at once.
    pub prefill_chunk: usize,
    /// Loading fails (before allocating) if weights plus cache would exceed this.
    pub memory_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            kv: KvCacheConfig::default(),
            kv_budget_bytes: None,
            prefill_chunk: 256,
            memory_budget: if cfg!(target_arch = "wasm32") { 3 << 30 } else { 16 << 30 },
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Raw text: special tokens are parsed, BOS added only if the model asks.
    Raw(&'a str),
    /// Chat messages rendered with the model's template (with the generation prompt).
    Chat(&'a [Message]),
    /// Token ids as they are.
    Ids(&'a [u32]),
}

/// Options of one request.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before any of these strings (they are not printed).
    pub stop: Vec<String>,
    /// Keep going through end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Recompute the whole sequence at every step instead of using the cache.
    pub no_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 256, sampler: SamplerConfig::default(), stop: Vec::new(), ignore_eos: false, no_cache: false }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// One of the stop strings.
    StopString,
    /// `max_tokens` reached.
    Length,
}

/// Where loading went (bytes in memory → ready), in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadTimings {
    /// GGUF header, metadata and tensor index.
    pub parse_ms: f64,
    /// The tokenizer from the GGUF's vocabulary and merges, and the chat template.
    pub tokenizer_ms: f64,
    /// Weights repacked for the kernels (or uploaded to the GPU).
    pub weights_ms: f64,
    /// The KV cache allocated.
    pub cache_ms: f64,
}

/// Numbers about the last request.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache (not recomputed).
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
    pub time_to_first_token_ms: f64,
}

/// The result of one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    /// Text released at the end that had not been streamed yet.
    #[serde(skip)]
    pub final_piece: String,
    pub stop_reason: Option<StopReason>,
    pub stats: GenerationStats,
    pub kv: KvStats,
}

/// A model file's bytes, borrowed or handed over.
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(v) => v,
        }
    }
    fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Borrowed(b) => b.to_vec(),
            Bytes::Owned(v) => v,
        }
    }
}

/// The forward pass the engine runs on.
enum Net {
    Cpu(Llama),
    /// The GPU model, and the file's bytes so the engine can move to the CPU
    /// when the device is lost.
    Gpu(Box<GpuLlama>, std::sync::Arc<Vec<u8>>),
}

pub struct Engine {
    net: Net,
    /// Why the engine left the GPU, once it has.
    fallback: Option<String>,
    /// On the GPU: the CPU weights batches run on, loaded on first use.
    batch_cpu: Option<Llama>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    cache: KvCache,
    opts: EngineOptions,
    last: GenerationStats,
    /// Chat prompts re-render the whole conversation; this re-tokenizes only the new part.
    encoder: IncrementalEncoder,
    load: LoadTimings,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("backend", &self.backend()).field("config", self.config()).field("kv", &self.cache.stats()).finish()
    }
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

    /// Loads a model onto the GPU of `ctx` (WebGPU kernels for the whole forward
    /// pass). The engine keeps the file's bytes: if the device is lost it moves
    /// to the CPU and rebuilds the cache from the token history.
    pub fn load_gpu(bytes: Vec<u8>, opts: EngineOptions, ctx: &GpuContext) -> Result<Self> {
        Self::load_on(Bytes::Owned(bytes), opts, Some(ctx))
    }

    fn load_on(bytes: Bytes, opts: EngineOptions, gpu: Option<&GpuContext>) -> Result<Self> {
        let mut opts = opts;
        if opts.prefill_chunk == 0 {
            return Err(Error::InvalidOption("prefill_chunk must be at least 1".into()));
        }
        let ms = |t: web_time::Instant| t.elapsed().as_secs_f64() * 1e3;
        let mut load = LoadTimings::default();
        let t = web_time::Instant::now();
        let g = Gguf::parse(bytes.as_slice())?;
        let cfg = LlamaConfig::from_gguf(&g)?;
        load.parse_ms = ms(t);
        let t = web_time::Instant::now();
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() != cfg.vocab_size {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!("{} tokens but the model has a vocabulary of {}", tokenizer.vocab_size(), cfg.vocab_size),
            });
        }
        if let Some(budget) = opts.kv_budget_bytes {
            opts.kv.window = KvCacheConfig::window_for_budget(budget, cfg.n_layer, cfg.kv_dim(), opts.kv.dtype);
        }
        opts.kv.validate()?;
        let kv_bytes = (opts.kv.window as u128) * opts.kv.bytes_per_token(cfg.n_layer, cfg.kv_dim()) as u128;
        let weight_bytes = Llama::estimate_bytes(&g, &cfg) as u128;
        if weight_bytes + kv_bytes > opts.memory_budget as u128 {
            return Err(Error::Memory(format!(
                "the weights ({} MiB) and a {}-token KV cache ({} MiB) exceed the {} MiB budget; use a smaller window",
                weight_bytes >> 20,
                opts.kv.window,
                kv_bytes >> 20,
                opts.memory_budget >> 20
            )));
        }
        let template = match g.metadata("tokenizer.chat_template") {
            Some(_) => {
                let src = g.get_str("tokenizer.chat_template")?;
                let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("").to_string();
                Some(ChatTemplate::new(src, &text(tokenizer.bos()), &text(tokenizer.eos()))?)
            }
            None => None,
        };
        load.tokenizer_ms = ms(t);
        let t = web_time::Instant::now();
        let (net, cache) = match gpu {
            None => {
                let model = Llama::load(&g, cfg.clone(), &Device::Cpu)?;
                // The file's bytes go before the cache comes (see `load_owned`).
                drop(g);
                drop(bytes);
                load.weights_ms = ms(t);
                let t = web_time::Instant::now();
                let cache = KvCache::new(opts.kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim)?;
                load.cache_ms = ms(t);
                (Net::Cpu(model), cache)
            }
            Some(ctx) => {
                let model = GpuLlama::load(&g, cfg.clone(), opts.kv, ctx)?;
                drop(g);
                load.weights_ms = ms(t);
                (Net::Gpu(Box::new(model), std::sync::Arc::new(bytes.into_vec())), KvCache::without_storage(opts.kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim)?)
            }
        };
        Ok(Self { net, fallback: None, batch_cpu: None, tokenizer, template, cache, opts, last: GenerationStats::default(), encoder: IncrementalEncoder::default(), load })
    }

    /// Where loading went.
    pub fn load_timings(&self) -> LoadTimings {
        self.load
    }

    pub fn config(&self) -> &LlamaConfig {
        match &self.net {
            Net::Cpu(m) => m.config(),
            Net::Gpu(m, _) => m.config(),
        }
    }
    /// The CPU model batches run on. An engine on the GPU loads one from the
    /// kept bytes the first time a batch runs (batches have no GPU kernels yet).
    pub(crate) fn model_mut(&mut self) -> Result<&mut Llama> {
        match &mut self.net {
            Net::Cpu(m) => Ok(m),
            Net::Gpu(gpu, bytes) => {
                if self.batch_cpu.is_none() {
                    let g = Gguf::parse(bytes)?;
                    self.batch_cpu = Some(Llama::load(&g, gpu.config().clone(), &Device::Cpu)?);
                }
                Ok(self.batch_cpu.as_mut().expect("loaded above"))
            }
        }
    }

    /// The GPU model, on the WebGPU backend.
    pub(crate) fn gpu_model_mut(&mut self) -> Option<&mut GpuLlama> {
        match &mut self.net {
            Net::Gpu(m, _) => Some(m),
            Net::Cpu(_) => None,
        }
    }

    /// Forgets a GPU step whose result nobody will collect (an aborted
    /// generation or batch): its work still lands in the cache it was for.
    pub(crate) fn discard_gpu_step(&mut self) {
        if let Net::Gpu(m, _) = &mut self.net {
            m.discard();
        }
    }

    /// `"webgpu"` or `"cpu"`.
    pub fn backend(&self) -> &'static str {
        match &self.net {
            Net::Cpu(_) => "cpu",
            Net::Gpu(..) => "webgpu",
        }
    }
    /// The GPU adapter, while the engine runs on one.
    pub fn adapter(&self) -> Option<&AdapterInfo> {
        match &self.net {
            Net::Gpu(m, _) => Some(&m.context().info),
            Net::Cpu(_) => None,
        }
    }
    /// Why the engine moved from the GPU to the CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
    /// Dispatches and bytes read back by the GPU's last step.
    pub fn gpu_step_costs(&self) -> Option<(usize, usize)> {
        match &self.net {
            Net::Gpu(m, _) => Some((m.last_dispatches, m.last_readback_bytes)),
            Net::Cpu(_) => None,
        }
    }
    /// Destroys the GPU device (tests of the device-lost fallback).
    pub fn lose_gpu_device(&self) {
        if let Net::Gpu(m, _) = &self.net {
            m.context().destroy();
        }
    }
    /// True when a GPU step's result can be collected without waiting (always
    /// on the CPU). The browser awaits this between [`step`](Self::step)s that
    /// returned [`Step::Waiting`].
    pub fn gpu_ready(&self) -> bool {
        match &self.net {
            Net::Gpu(m, _) => {
                m.poll();
                m.ready()
            }
            Net::Cpu(_) => true,
        }
    }

    /// Moves to the CPU backend (the GPU device was lost): loads the weights
    /// from the kept bytes and rebuilds the cache by feeding its token history
    /// (the bounded cache evicts exactly as before). Returns the last token's logits.
    pub(crate) fn fall_back_to_cpu(&mut self, why: &Error) -> Result<Option<Vec<f32>>> {
        let Net::Gpu(_, bytes) = &self.net else { return Ok(None) };
        let bytes = bytes.clone();
        let cfg = self.config().clone();
        let model = match self.batch_cpu.take() {
            Some(m) => m,
            None => Llama::load(&Gguf::parse(&bytes)?, cfg.clone(), &Device::Cpu)?,
        };
        let history = self.cache.tokens().to_vec();
        self.cache = KvCache::new(self.opts.kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim)?;
        self.net = Net::Cpu(model);
        self.fallback = Some(format!("{why}; continuing on the CPU"));
        if history.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.feed(&history, &mut || true)?))
    }

    /// The largest chunk the backend runs at once.
    fn chunk_limit(&self) -> usize {
        match &self.net {
            Net::Cpu(_) => self.opts.prefill_chunk,
            Net::Gpu(..) => self.opts.prefill_chunk.min(GPU_MAX_CHUNK),
        }
    }

    /// Runs one planned chunk and returns its logits (every row or the last),
    /// blocking on the GPU. A lost device moves the engine to the CPU and the
    /// chunk is recomputed there.
    fn forward(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        match &mut self.net {
            Net::Cpu(m) => Ok(m.forward(ids, &mut self.cache, all_logits)?.to_vec()),
            Net::Gpu(m, _) => {
                let rb = if all_logits { Readback::AllLogits } else { Readback::LastLogits };
                let before = self.cache.len();
                let r = m.run(ids, &mut self.cache, rb, None);
                match r {
                    Ok(GpuOutput::Logits(l)) => Ok(l),
                    Ok(_) => Err(Error::Backend("the GPU returned another kind of result than asked".into())),
                    Err(e @ Error::DeviceLost(_)) => {
                        let keep = self.cache.tokens()[..before.min(self.cache.len())].to_vec();
                        self.fall_back_to_cpu_with(&e, &keep)?;
                        self.forward(ids, all_logits)
                    }
                    Err(e) => {
                        m.discard();
                        Err(e)
                    }
                }
            }
        }
    }

    /// [`fall_back_to_cpu`](Self::fall_back_to_cpu) with the history cut to `keep`.
    fn fall_back_to_cpu_with(&mut self, why: &Error, keep: &[u32]) -> Result<()> {
        self.cache.reset();
        self.cache.commit(keep);
        self.fall_back_to_cpu(why)?;
        Ok(())
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }
    pub fn kv_stats(&self) -> KvStats {
        self.cache.stats()
    }
    pub fn kv_dtype(&self) -> KvDType {
        self.opts.kv.dtype
    }
    pub fn last_stats(&self) -> &GenerationStats {
        &self.last
    }
    /// Token ids currently in the cache's history.
    pub fn cached_tokens(&self) -> &[u32] {
        self.cache.tokens()
    }
    /// Switches the forward pass's per-operation timing on (fresh) or off.
    pub fn set_profiling(&mut self, on: bool) {
        if let Net::Cpu(m) = &mut self.net {
            m.set_profiling(on);
        }
    }
    /// Where the forward pass's time went since profiling was switched on (CPU backend).
    pub fn profile(&self) -> Option<&Profile> {
        match &self.net {
            Net::Cpu(m) => m.profile(),
            Net::Gpu(..) => None,
        }
    }

    pub fn weight_bytes(&self) -> usize {
        match &self.net {
            Net::Cpu(m) => m.weight_bytes(),
            Net::Gpu(m, _) => m.weight_bytes(),
        }
    }

    /// Empties the cache and the history.
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    pub fn detokenize(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids)
    }

    /// The prompt text chat messages render to.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(Error::ChatTemplate("the model has no chat template; use a raw prompt".into())),
        }
    }

    /// The ids of a prompt on its own (no reuse of the cached conversation).
    pub(crate) fn standalone_prompt_ids(&self, prompt: Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Raw(text) => self.tokenize(text)?,
            Prompt::Chat(messages) => self.tokenize(&self.render_chat(messages)?)?,
            Prompt::Ids(ids) => ids.to_vec(),
        };
        self.check_ids(ids)
    }

    fn check_ids(&self, ids: Vec<u32>) -> Result<Vec<u32>> {
        if ids.is_empty() {
            return Err(Error::InvalidPrompt("the prompt is empty".into()));
        }
        let vocab = self.config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        Ok(ids)
    }

    pub fn prompt_ids(&mut self, prompt: Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Raw(text) => self.tokenize(text)?,
            Prompt::Chat(messages) => {
                let text = self.render_chat(messages)?;
                match self.extend_cached_text(&text)? {
                    Some(ids) => ids,
                    None => self.encoder.encode(&self.tokenizer, &text)?,
                }
            }
            Prompt::Ids(ids) => ids.to_vec(),
        };
        self.check_ids(ids)
    }

    /// When the rendered chat text extends the text of the cached tokens (the next
    /// turn of the same conversation), keep the cached tokens as they are (the
    /// model's own tokens, which may differ from re-tokenizing its answer) and
    /// tokenize only the new text. Without this, an answer whose re-tokenization
    /// differs would force a full re-prefill once tokens have been evicted.
    fn extend_cached_text(&self, text: &str) -> Result<Option<Vec<u32>>> {
        let cached = self.cache.tokens();
        if cached.is_empty() || self.tokenizer.has_bos_prefix() {
            return Ok(None);
        }
        let mut n = cached.len();
        let mut bytes = self.tokenizer.decode_bytes(cached);
        // Cut at a character boundary the new text shares.
        while n > 0 && !(text.as_bytes().starts_with(&bytes) && text.is_char_boundary(bytes.len())) {
            n -= 1;
            bytes.truncate(bytes.len() - self.tokenizer.raw_bytes(cached[n]).len());
            if text.len() > bytes.len() && n + 64 < cached.len() {
                // Not an extension of the conversation: let the token-level path decide.
                return Ok(None);
            }
        }
        if n == 0 || bytes.len() == text.len() {
            return Ok(None);
        }
        let mut ids = cached[..n].to_vec();
        let suffix = self.tokenizer.encode_part_text(&text[bytes.len()..])?;
        ids.extend(suffix);
        Ok(Some(ids))
    }

    /// Feeds `ids` through the cache in chunks, returning the logits of the last token.
    /// `keep_going` is asked between chunks; returning false aborts.
    fn feed(&mut self, ids: &[u32], keep_going: &mut dyn FnMut() -> bool) -> Result<Vec<f32>> {
        let mut i = 0;
        let mut last = None;
        while i < ids.len() {
            if !keep_going() {
                return Err(Error::Aborted);
            }
            let n = self.cache.next_chunk(self.chunk_limit().min(ids.len() - i));
            let logits = self.forward(&ids[i..i + n], false);
            match logits {
                Ok(l) if i + n == ids.len() => last = Some(l),
                Ok(_) => {}
                Err(e) => {
                    self.cache.reset();
                    return Err(e);
                }
            }
            i += n;
        }
        last.ok_or_else(|| Error::InvalidPrompt("nothing to feed".into()))
    }

    /// Appends `ids` to the cached sequence and returns the last token's logits.
    pub fn append(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.feed(ids, &mut || true)
    }

    /// Logits for `ids` from an empty cache (uses the cache; for tests and tools).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.cache.reset();
        self.append(ids)
    }

    /// Feeds `ids` from an empty cache in planned chunks, handing each chunk's
    /// logits (`[T, vocab]`, one row per fed token) to `on_chunk(start, logits)`.
    fn feed_all(&mut self, ids: &[u32], on_chunk: &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        self.cache.reset();
        let mut i = 0;
        while i < ids.len() {
            let n = self.cache.next_chunk(self.chunk_limit().min(ids.len() - i));
            match self.forward(&ids[i..i + n], true) {
                Ok(l) => on_chunk(i, &l)?,
                Err(e) => {
                    self.cache.reset();
                    return Err(e);
                }
            }
            i += n;
        }
        Ok(())
    }

    /// The logits after every token of `ids`, fed through the bounded cache from empty.
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(ids.len());
        let vocab = self.config().vocab_size;
        self.feed_all(ids, &mut |_, l| {
            out.extend(l.chunks_exact(vocab).map(<[f32]>::to_vec));
            Ok(())
        })?;
        Ok(out)
    }

    /// Scores every next token of `ids` through the bounded cache, from an empty cache.
    /// Returns (tokens scored, summed negative log-likelihood).
    pub fn perplexity(&mut self, ids: &[u32], mut on_chunk: impl FnMut(usize, f64)) -> Result<(usize, f64)> {
        if ids.len() < 2 {
            return Err(Error::InvalidPrompt("perplexity needs at least two tokens".into()));
        }
        let mut nll = 0.0f64;
        let mut scored = 0usize;
        let inputs = &ids[..ids.len() - 1];
        let vocab = self.config().vocab_size;
        self.feed_all(inputs, &mut |start, logits| {
            let n = logits.len() / vocab;
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                nll -= ops::log_softmax_at(row, ids[start + 1 + j] as usize);
            }
            scored += n;
            on_chunk(scored, nll);
            Ok(())
        })?;
        Ok((scored, nll))
    }

    /// Generates from `prompt`, calling `on_piece` with each piece of text as it
    /// is produced (an empty piece is a heartbeat between prefill chunks and
    /// held-back tokens); `on_piece` returns false to abort with
    /// [`Error::Aborted`]. The cache keeps what was computed before the abort.
    /// The cached prefix shared with the previous request is not recomputed.
    pub fn generate(
        &mut self,
        prompt: Prompt,
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut session = self.start(prompt, opts)?;
        loop {
            match self.step(&mut session)? {
                Step::Working | Step::Waiting => {
                    if !on_piece("") {
                        return Err(Error::Aborted);
                    }
                }
                Step::Piece(p) => {
                    if !on_piece(&p) {
                        return Err(Error::Aborted);
                    }
                }
                Step::Done(g) => {
                    if !g.final_piece.is_empty() {
                        on_piece(&g.final_piece);
                    }
                    return Ok(*g);
                }
            }
        }
    }

    /// Starts a generation that [`step`](Self::step) advances one prefill chunk
    /// or one token at a time (the browser worker yields to its event loop
    /// between steps, so an abort message is seen within one token). Checks
    /// every option and reuses the cached prefix.
    pub fn start(&mut self, prompt: Prompt, opts: &GenerateOptions) -> Result<Session> {
        let started = Instant::now();
        let prompt_ids = self.prompt_ids(prompt)?;
        let sampler = Sampler::new(opts.sampler)?;
        if opts.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidOption("stop strings must not be empty".into()));
        }
        // A step an aborted generation left in flight: its result is nobody's.
        self.discard_gpu_step();
        if opts.no_cache {
            self.cache.reset();
        }
        let reused = self.cache.reuse_prefix(&prompt_ids);
        Ok(Session::new(prompt_ids, reused, sampler, opts, started))
    }

    /// Advances `session` by one prefill chunk or one generated token. On the
    /// GPU a step submits work and the next step collects it: in the browser a
    /// step may return [`Step::Waiting`] (await [`gpu_ready`](Self::gpu_ready),
    /// then step again); native code blocks instead.
    pub fn step(&mut self, s: &mut Session) -> Result<Step> {
        if s.done {
            return Err(Error::InvalidOption("this generation has finished".into()));
        }
        // The session must still own the cache: another request in between would have changed it.
        let owned = if s.decoding { &s.history[..] } else { &s.prompt_ids[..s.fed] };
        if self.cache.tokens() != owned {
            s.done = true;
            return Err(Error::InvalidOption("another request used the engine during this generation".into()));
        }
        if s.opts.no_cache && matches!(self.net, Net::Gpu(..)) {
            s.done = true;
            return Err(Error::InvalidOption("no_cache runs on the CPU backend only".into()));
        }
        // The GPU step in flight, if any.
        if let Some(out) = self.collect_gpu(s)? {
            if s.wants_result {
                s.wants_result = false;
                match out {
                    GpuOutput::Token(t) => {
                        s.next_token = Some(t);
                        s.logits = Some(Vec::new());
                    }
                    GpuOutput::Candidates(c) => {
                        s.next_token = Some(s.sampler.sample_candidates(&c));
                        s.logits = Some(Vec::new());
                    }
                    GpuOutput::PenalizedLogits(l) => {
                        s.next_token = Some(s.sampler.sample_penalized(&l));
                        s.logits = Some(Vec::new());
                    }
                    GpuOutput::Logits(l) => s.logits = Some(l),
                }
            }
        } else if s.wants_result {
            return Ok(Step::Waiting);
        }
        // Prefill, one chunk per step.
        if !s.decoding {
            let total = s.prompt_ids.len();
            if s.fed < total {
                let n = self.cache.next_chunk(self.chunk_limit().min(total - s.fed));
                let last = s.fed + n == total;
                let chunk = s.prompt_ids[s.fed..s.fed + n].to_vec();
                self.feed_step(s, &chunk, last)?;
                s.fed += n;
                if !last || s.logits.is_none() {
                    return Ok(Step::Working);
                }
            } else if s.logits.is_none() {
                return Ok(Step::Working);
            }
            s.stats.prefill_ms = ms(s.started);
            s.stats.prefill_tokens_per_sec = per_sec(total - s.stats.reused_tokens, s.stats.prefill_ms);
            if s.opts.max_tokens == 0 {
                return Ok(self.finish(s, Some(StopReason::Length)));
            }
            s.decoding = true;
            s.decode_started = Some(Instant::now());
        }
        // Decode: sample from the pending logits (or take the GPU's greedy token), emit, feed the token.
        let Some(mut logits) = s.logits.take() else { return Ok(Step::Working) };
        let t0 = Instant::now();
        let advanced = match s.next_token.take() {
            Some(tok) => s.accept(&self.tokenizer, tok),
            None => s.advance(&self.tokenizer, &mut logits),
        };
        if let Net::Cpu(m) = &mut self.net {
            m.profile_add(Op::Sampling, t0.elapsed().as_secs_f64());
        }
        let (tok, piece) = match advanced {
            Advance::Finished(reason) => return Ok(self.finish(s, reason)),
            Advance::Token { token, piece } => (token, piece),
        };
        if s.opts.no_cache {
            self.cache.reset();
            let hist = s.history.clone();
            s.logits = Some(self.feed(&hist, &mut || true)?);
        } else {
            match &mut self.net {
                // The logits buffer is reused: a decode step allocates nothing.
                Net::Cpu(m) => match m.forward(&[tok], &mut self.cache, false) {
                    Ok(l) => {
                        logits.clear();
                        logits.extend_from_slice(l);
                        s.logits = Some(logits);
                    }
                    Err(e) => {
                        self.cache.reset();
                        return Err(e);
                    }
                },
                Net::Gpu(..) => self.feed_step(s, &[tok], true)?,
            }
        }
        Ok(match piece {
            Some(p) => Step::Piece(p),
            None => Step::Working,
        })
    }

    /// What the GPU should read back for this session's next token (the
    /// repetition penalty, if any, applied on the GPU first): 8 bytes when the
    /// choice is greedy, the 64 best logits for a top-k of at most 64, else
    /// the whole row.
    fn readback_for(s: &Session) -> (Readback, Option<(Vec<u32>, f32)>) {
        let c = &s.opts.sampler;
        let penalty = s.sampler.penalty_ids(&s.history).filter(|(ids, _)| ids.len() <= GPU_MAX_PENALTY_IDS);
        let penalty_ok = penalty.is_some() || s.sampler.penalty_ids(&s.history).is_none();
        if penalty_ok && c.temperature == 0.0 {
            (Readback::Argmax, penalty)
        } else if penalty_ok && c.top_k > 0 && c.top_k <= GPU_TOP_K {
            (Readback::TopK, penalty)
        } else {
            (Readback::LastLogits, None)
        }
    }

    /// Feeds one planned chunk for `s`: on the CPU the logits (if `wanted`)
    /// are in `s.logits` on return; on the GPU the work is submitted and the
    /// result collected by the next step.
    fn feed_step(&mut self, s: &mut Session, ids: &[u32], wanted: bool) -> Result<()> {
        match &mut self.net {
            Net::Cpu(_) => {
                let l = self.forward_chunk(ids)?;
                if wanted {
                    s.logits = Some(l);
                }
                Ok(())
            }
            Net::Gpu(m, _) => {
                let (rb, penalty) = if wanted { Self::readback_for(s) } else { (Readback::Argmax, None) };
                match m.submit(ids, &mut self.cache, rb, penalty.as_ref().map(|(i, p)| (&i[..], *p))) {
                    Ok(()) => {
                        s.wants_result = wanted;
                        Ok(())
                    }
                    Err(e @ Error::DeviceLost(_)) => {
                        let keep = self.cache.tokens().to_vec();
                        self.fall_back_to_cpu_with(&e, &keep)?;
                        self.feed_step(s, ids, wanted)
                    }
                    Err(e) => {
                        self.cache.reset();
                        s.done = true;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Collects the GPU step in flight: `None` when there is none, or (in the
    /// browser) when it has not finished yet. A lost device moves the engine to
    /// the CPU, which recomputes the result from the cache's history.
    fn collect_gpu(&mut self, s: &mut Session) -> Result<Option<GpuOutput>> {
        let Net::Gpu(m, _) = &mut self.net else { return Ok(None) };
        if !m.in_flight() {
            return Ok(None);
        }
        if !m.ready() {
            m.wait()?;
            m.poll();
            if !m.ready() {
                return Ok(None);
            }
        }
        let r = loop {
            match m.take() {
                Ok(Some(out)) => break Ok(out),
                // The top-k was not provably complete: the whole row is on its way.
                Ok(None) => {
                    m.wait()?;
                    m.poll();
                    if !m.ready() {
                        return Ok(None);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match r {
            Ok(out) => Ok(Some(out)),
            Err(e @ Error::DeviceLost(_)) => {
                let keep = self.cache.tokens().to_vec();
                self.cache.reset();
                self.cache.commit(&keep);
                let logits = self.fall_back_to_cpu(&e)?.unwrap_or_default();
                Ok(Some(GpuOutput::Logits(logits)))
            }
            Err(e) => {
                self.cache.reset();
                s.done = true;
                Err(e)
            }
        }
    }

    /// Runs one planned chunk, returning the last token's logits; on failure the cache is emptied.
    fn forward_chunk(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        match self.forward(ids, false) {
            Ok(l) => Ok(l),
            Err(e) => {
                self.cache.reset();
                Err(e)
            }
        }
    }

    fn finish(&mut self, s: &mut Session, reason: Option<StopReason>) -> Step {
        let g = s.finish(reason, self.cache.stats());
        self.last = g.stats.clone();
        Step::Done(Box::new(g))
    }
}

/// What [`Session::advance`] did with one sampled token.
pub(crate) enum Advance {
    /// The token continues the text (feed it); `piece` is text that can be released.
    Token { token: u32, piece: Option<String> },
    /// The generation ended (the token, if any, is not fed).
    Finished(Option<StopReason>),
}

/// A generation in progress (see [`Engine::start`]).
pub struct Session {
    pub(crate) opts: GenerateOptions,
    pub(crate) sampler: Sampler,
    pub(crate) prompt_ids: Vec<u32>,
    /// Prompt tokens fed so far.
    pub(crate) fed: usize,
    /// The prompt and the generated tokens; during decode the cache holds exactly these.
    pub(crate) history: Vec<u32>,
    pub(crate) logits: Option<Vec<f32>>,
    pub(crate) generated: Vec<u32>,
    pub(crate) text: String,
    pub(crate) emitted: usize,
    pub(crate) decoder: StreamDecoder,
    pub(crate) stats: GenerationStats,
    pub(crate) started: Instant,
    pub(crate) decode_started: Option<Instant>,
    pub(crate) done: bool,
    /// The prompt is in the cache and tokens are being generated.
    pub(crate) decoding: bool,
    /// The GPU's greedy choice for the next token (instead of logits).
    pub(crate) next_token: Option<u32>,
    /// A GPU step in flight will produce this session's next logits.
    pub(crate) wants_result: bool,
}

impl Session {
    pub(crate) fn new(prompt_ids: Vec<u32>, reused: usize, sampler: Sampler, opts: &GenerateOptions, started: Instant) -> Self {
        let stats = GenerationStats { prompt_tokens: prompt_ids.len(), reused_tokens: reused, ..Default::default() };
        Session {
            opts: opts.clone(),
            sampler,
            history: prompt_ids.clone(),
            prompt_ids,
            fed: reused,
            logits: None,
            generated: Vec::new(),
            text: String::new(),
            emitted: 0,
            decoder: StreamDecoder::new(),
            stats,
            started,
            decode_started: None,
            done: false,
            decoding: false,
            next_token: None,
            wants_result: false,
        }
    }

    /// Samples the next token from `logits` and applies the stop rules
    /// (end-of-generation token, stop strings, `max_tokens`).
    pub(crate) fn advance(&mut self, tokenizer: &Tokenizer, logits: &mut [f32]) -> Advance {
        let tok = self.sampler.sample(logits, &self.history);
        self.accept(tokenizer, tok)
    }

    /// Applies the stop rules to a chosen token (see [`advance`](Self::advance)).
    pub(crate) fn accept(&mut self, tokenizer: &Tokenizer, tok: u32) -> Advance {
        if self.generated.is_empty() {
            self.stats.time_to_first_token_ms = ms(self.started);
        }
        if tokenizer.is_eog(tok) && !self.opts.ignore_eos {
            return Advance::Finished(Some(StopReason::Eos));
        }
        self.generated.push(tok);
        self.history.push(tok);
        self.text.push_str(&self.decoder.push(tokenizer, tok));
        if let Some(pos) = find_stop(&self.text, &self.opts.stop) {
            self.text.truncate(pos);
            return Advance::Finished(Some(StopReason::StopString));
        }
        if self.generated.len() >= self.opts.max_tokens {
            let rest = self.decoder.finish();
            self.text.push_str(&rest);
            return Advance::Finished(Some(StopReason::Length));
        }
        // Release what can no longer turn into a stop string.
        let safe = safe_prefix(&self.text, &self.opts.stop);
        let piece = if safe > self.emitted {
            let p = self.text[self.emitted..safe].to_string();
            self.emitted = safe;
            Some(p)
        } else {
            None
        };
        Advance::Token { token: tok, piece }
    }

    /// Ends the session: the generation with its stats (`kv`: its cache's occupancy).
    pub(crate) fn finish(&mut self, reason: Option<StopReason>, kv: KvStats) -> Generation {
        self.done = true;
        self.stats.generated_tokens = self.generated.len();
        if let Some(t) = self.decode_started {
            self.stats.decode_ms = ms(t);
        }
        self.stats.decode_tokens_per_sec = per_sec(self.generated.len().saturating_sub(1), self.stats.decode_ms);
        let final_piece = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        Generation {
            prompt_ids: self.prompt_ids.clone(),
            generated_ids: self.generated.clone(),
            text: self.text.clone(),
            final_piece,
            stop_reason: reason,
            stats: self.stats.clone(),
            kv,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
    /// Prompt tokens that still need the forward pass.
    pub fn prompt_tokens_left(&self) -> usize {
        self.prompt_ids.len() - self.fed
    }
}

/// What one [`Engine::step`] produced.
#[derive(Debug)]
pub enum Step {
    /// A prefill chunk ran, or a token was held back (it may start a stop string).
    Working,
    /// The GPU has not finished the step in flight (browser only): await
    /// [`Engine::gpu_ready`] and step again.
    Waiting,
    /// New text.
    Piece(String),
    /// The generation ended; `final_piece` holds any text not yet streamed.
    Done(Box<Generation>),
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn per_sec(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Byte offset of the first stop string in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the prefix of `text` that cannot be the start of a stop string.
fn safe_prefix(text: &str, stops: &[String]) -> usize {
    let mut safe = text.len();
    for s in stops {
        // The longest suffix of `text` that is a proper prefix of `s`.
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                safe = safe.min(text.len() - i);
            }
        }
    }
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    safe
}
