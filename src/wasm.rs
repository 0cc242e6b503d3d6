//! The wasm boundary: the only wasm-bindgen code. `www/worker.js` drives a
//! [`KvEngine`] inside a Web Worker; every core error crosses as a JS `Error`
//! whose `name` is `KvChatError` and whose `kind` is [`Error::kind`]. Every
//! value that crosses is a [`crate::protocol`] type (declared for TypeScript in
//! `www/protocol.d.ts`).

use crate::chat_template::Message;
use crate::{Batch, BatchOptions};
use crate::chat_template::tools::{ToolChoice, Tools};
use crate::engine::{Engine, EngineOptions, GenerateOptions, Prompt, Session, Step};
use crate::error::Error;
use crate::gguf::ByteSource;
use crate::kv_cache::{ColdBits, ColdConfig, KvCacheConfig, KvDType};
use crate::protocol::{
    BatchStats, BatchStepEvent, BatchStepReply, EngineBatchOptions, EngineGenerateOptions, EngineLoadOptions, EngineStats, MemoryView, ModelInfo, Profile, StepReply,
};
use crate::sampler::SamplerConfig;
use serde::Deserialize;
use wasm_bindgen::prelude::*;

/// The one place a core error becomes a JS value.
fn to_js(e: Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name("KvChatError");
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &e.kind().into());
    err.into()
}

fn bad_option(msg: impl Into<String>) -> JsValue {
    to_js(Error::InvalidOption(msg.into()))
}

fn to_value<T: serde::Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::NULL)
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The threaded build's `initThreadPool(n)` (wasm-bindgen-rayon: n Web Workers on the shared memory).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// How many threads the matmuls split their rows across (after `initThreadPool`
/// in the threaded build; always 1 in the single-thread builds).
#[wasm_bindgen(js_name = setThreads)]
pub fn set_threads(n: usize) -> usize {
    crate::backend::cpu::set_threads(n);
    crate::backend::cpu::threads()
}

/// Bytes of the wasm linear memory (grows, never shrinks).
#[wasm_bindgen(js_name = wasmMemoryBytes)]
pub fn wasm_memory_bytes() -> f64 {
    wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64
}

/// A whole number in `min..=max`, or a clear error naming the option.
fn count(v: Option<f64>, name: &str, default: usize, min: usize, max: usize) -> Result<usize, JsValue> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x.fract() == 0.0 && x >= min as f64 && x <= max as f64 => Ok(x as usize),
        Some(x) => Err(bad_option(format!("{name} must be a whole number in {min}..={max} (got {x})"))),
    }
}

fn float(v: Option<f64>, name: &str, default: f32) -> Result<f32, JsValue> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() => Ok(x as f32),
        Some(x) => Err(bad_option(format!("{name} must be a finite number (got {x})"))),
    }
}

fn gen_options(o: EngineGenerateOptions) -> Result<GenerateOptions, JsValue> {
    let d = SamplerConfig::default();
    let sampler = SamplerConfig {
        temperature: float(o.temperature, "temperature", d.temperature)?,
        top_k: count(o.top_k, "topK", d.top_k, 0, 1 << 24)?,
        top_p: float(o.top_p, "topP", d.top_p)?,
        min_p: float(o.min_p, "minP", d.min_p)?,
        repeat_penalty: float(o.repeat_penalty, "repeatPenalty", d.repeat_penalty)?,
        repeat_last_n: d.repeat_last_n,
        seed: match o.seed {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some(s as u64),
            Some(s) => return Err(bad_option(format!("seed must be a number >= 0 (got {s})"))),
        },
    };
    Ok(GenerateOptions {
        max_tokens: count(o.max_tokens, "maxTokens", 256, 0, 1 << 24)?,
        sampler,
        stop: o.stop.unwrap_or_default(),
        ignore_eos: o.ignore_eos.unwrap_or(false),
        no_cache: o.no_cache.unwrap_or(false),
        format: o.response_format.as_ref().and_then(|f| f.to_engine()),
        logprobs: match o.logprobs {
            None => None,
            Some(n) => Some(count(Some(n), "logprobs", 0, 0, 20)?),
        },
        logit_bias: logit_bias(o.logit_bias.unwrap_or_default())?,
        frequency_penalty: float(o.frequency_penalty, "frequencyPenalty", 0.0)?,
        presence_penalty: float(o.presence_penalty, "presencePenalty", 0.0)?,
        tools: match o.tools {
            None if o.tool_choice.is_some() => return Err(bad_option("toolChoice needs tools")),
            None => None,
            Some(specs) => {
                let choice = o.tool_choice.as_ref().map_or(ToolChoice::Auto, |c| c.to_engine());
                Some(Tools::new(specs, choice).map_err(to_js)?)
            }
        },
    })
}

/// `logitBias`: `{ "token id": bias }`.
fn logit_bias(bias: std::collections::BTreeMap<String, f64>) -> Result<Vec<(u32, f32)>, JsValue> {
    bias.into_iter()
        .map(|(id, b)| match id.trim().parse::<u32>() {
            Ok(id) if b.is_finite() => Ok((id, b as f32)),
            Ok(_) => Err(bad_option(format!("logitBias for token {id} must be a finite number"))),
            Err(_) => Err(bad_option(format!("logitBias keys are token ids (got {id:?})"))),
        })
        .collect()
}

enum Input {
    Raw(String),
    Chat(Vec<Message>),
}

fn parse_input(input: JsValue) -> Result<Input, JsValue> {
    if let Some(text) = input.as_string() {
        Ok(Input::Raw(text))
    } else if js_sys::Array::is_array(&input) {
        let messages: Vec<Message> = serde_wasm_bindgen::from_value(input)
            .map_err(|e| to_js(Error::InvalidPrompt(format!("messages must be [{{role, content}}]: {e}"))))?;
        Ok(Input::Chat(messages))
    } else {
        Err(to_js(Error::InvalidPrompt("input must be a string or an array of {role, content} messages".into())))
    }
}

fn from_js<T: for<'de> Deserialize<'de> + Default>(v: JsValue, what: &str) -> Result<T, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(v).map_err(|e| bad_option(format!("{what}: {e}")))
}

/// The engine as the worker sees it.
#[wasm_bindgen]
pub struct KvEngine {
    engine: Engine,
    session: Option<Session>,
    batch: Option<Batch>,
}

impl KvEngine {
    /// Ends the batch in progress, if any (a GPU job it left in flight is discarded).
    fn drop_batch(&mut self) {
        if let Some(mut b) = self.batch.take() {
            self.engine.end_batch(&mut b);
        }
    }
}

/// A model file left in its JS `Uint8Array`, read into wasm memory on demand.
struct JsBytes(js_sys::Uint8Array);

impl ByteSource for JsBytes {
    fn byte_len(&self) -> u64 {
        self.0.length() as u64
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let end = offset.checked_add(out.len() as u64).filter(|&e| e <= self.byte_len());
        let end = end.ok_or_else(|| Error::Gguf(format!("{} bytes at {offset} run past the file", out.len())))?;
        self.0.subarray(offset as u32, end as u32).copy_to(out);
        Ok(())
    }
}

#[wasm_bindgen]
impl KvEngine {
    /// Loads a GGUF model from its bytes (CPU backend). The bytes stay in
    /// their ArrayBuffer: the header and then one piece of a tensor at a time
    /// are copied into wasm memory, whose high-water mark (it never shrinks)
    /// is then the weights and the cache, not the file besides.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: js_sys::Uint8Array, options: JsValue) -> Result<KvEngine, JsValue> {
        let opts = engine_options(options)?;
        let engine = Engine::load_from(&JsBytes(bytes), opts).map_err(to_js)?;
        Ok(KvEngine { engine, session: None, batch: None })
    }

    /// Loads a GGUF model onto WebGPU: rejects (kind `gpu`) when the browser
    /// has no adapter or device with the limits the kernels need.
    #[wasm_bindgen(js_name = loadGpu)]
    pub async fn load_gpu(bytes: Vec<u8>, options: JsValue) -> Result<KvEngine, JsValue> {
        let opts = engine_options(options)?;
        let ctx = crate::backend::webgpu::GpuContext::new().await.map_err(to_js)?;
        let engine = Engine::load_gpu(bytes, opts, &ctx).map_err(to_js)?;
        Ok(KvEngine { engine, session: None, batch: None })
    }

    /// True when the GPU step in flight has finished (always true on the CPU):
    /// after a `step()` that returned `{ waiting: true }`, yield to the event
    /// loop until this holds, then step again.
    #[wasm_bindgen(js_name = gpuReady)]
    pub fn gpu_ready(&self) -> bool {
        self.engine.gpu_ready()
    }

    /// Destroys the GPU device (tests of the fallback to the CPU).
    #[wasm_bindgen(js_name = loseGpuDevice)]
    pub fn lose_gpu_device(&self) {
        self.engine.lose_gpu_device();
    }

    /// Traps, as a bug in the engine would (tests of crash recovery): the
    /// instance is poisoned and the worker reports `crash`.
    #[wasm_bindgen(js_name = simulateCrash)]
    pub fn simulate_crash(&self) {
        std::process::abort();
    }

    /// Makes the next matmul helper thread trap (the threaded build's test of a stuck helper:
    /// the engine waits [30 s](crate::backend::cpu) for it, then traps itself and the worker reports `crash`).
    #[cfg(feature = "threads")]
    #[wasm_bindgen(js_name = simulateHelperCrash)]
    pub fn simulate_helper_crash(&self) {
        crate::backend::cpu::trap_next_helper_job();
    }

    /// `"webgpu"` or `"cpu"` (after a lost device, `"cpu"`).
    pub fn backend(&self) -> String {
        self.engine.backend().to_string()
    }
}

fn engine_options(options: JsValue) -> Result<EngineOptions, JsValue> {
    {
        let o: EngineLoadOptions = from_js(options, "load options")?;
        let d = KvCacheConfig::default();
        let kv = KvCacheConfig {
            window: count(o.kv_window, "kvWindow", d.window, 1, 1 << 20)?,
            sinks: count(o.kv_sinks, "kvSinks", d.sinks, 0, 1 << 20)?,
            dtype: if o.kv_f16.unwrap_or(false) { KvDType::F16 } else { KvDType::F32 },
            cold: match count(o.kv_cold, "kvCold", 0, 0, 1 << 24)? {
                0 => None,
                capacity => Some(ColdConfig {
                    capacity,
                    bits: ColdBits::from_bits(count(o.kv_cold_bits, "kvColdBits", 8, 4, 8)? as u32).map_err(to_js)?,
                    recall: count(o.kv_recall, "kvRecall", 512, 1, 1 << 20)?,
                }),
            },
        };
        let opts = EngineOptions {
            kv,
            kv_budget_bytes: o.kv_budget_bytes.map(|b| b.max(0.0) as usize),
            // 64 tokens is about a second of prefill in the browser: Stop takes effect within it.
            prefill_chunk: count(o.prefill_chunk, "prefillChunk", 64, 1, 4096)?,
            ..Default::default()
        };
        Ok(opts)
    }
}

#[wasm_bindgen]
impl KvEngine {

    /// The model's shape and the cache's settings.
    pub fn info(&self) -> JsValue {
        to_value(&ModelInfo::from(&self.engine))
    }

    /// Token ids of `text`, special tokens parsed as llama.cpp does.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.engine.tokenize(text).map_err(to_js)
    }

    pub fn detokenize(&self, ids: &[u32]) -> String {
        self.engine.detokenize(ids)
    }

    /// Starts a generation from a string or `[{role, content}]`; `step()` advances it.
    pub fn start(&mut self, input: JsValue, options: JsValue) -> Result<(), JsValue> {
        self.session = None;
        let o: EngineGenerateOptions = from_js(options, "generate options")?;
        let opts = gen_options(o)?;
        let session = match parse_input(input)? {
            Input::Raw(text) => self.engine.start(Prompt::Raw(&text), &opts),
            Input::Chat(messages) => self.engine.start(Prompt::Chat(&messages), &opts),
        }
        .map_err(to_js)?;
        self.session = Some(session);
        Ok(())
    }

    /// Advances the current generation by one prefill chunk or one token.
    /// Returns a [`StepReply`]: `{ piece, waiting? }` or `{ done: true, piece, result }`.
    pub fn step(&mut self) -> Result<JsValue, JsValue> {
        let Some(s) = self.session.as_mut() else {
            return Err(bad_option("no generation in progress"));
        };
        let step = self.engine.step(s);
        if matches!(step, Ok(Step::Done(_)) | Err(_)) {
            self.session = None;
        }
        Ok(to_value(&StepReply::from(&step.map_err(to_js)?)))
    }

    /// Drops the current generation (or batch); the cache keeps what was computed.
    pub fn abort(&mut self) {
        self.session = None;
        self.drop_batch();
    }

    /// Starts a batch. `inputs`: an array whose items are a prompt string, a
    /// messages array, or `{ input, ...generate options }` (per-input
    /// overrides). `options`: generate options shared by every input, plus
    /// `batchSize` (default 8), `kvWindow` (each sequence's cache, default
    /// min(512, the engine's)), `kvSinks`, `sharePrefix` (default true).
    #[wasm_bindgen(js_name = batchStart)]
    pub fn batch_start(&mut self, inputs: JsValue, options: JsValue) -> Result<JsValue, JsValue> {
        self.drop_batch();
        self.session = None;
        let base: EngineGenerateOptions = from_js(options.clone(), "batch options")?;
        let bo: EngineBatchOptions = from_js(options, "batch options")?;
        if !js_sys::Array::is_array(&inputs) {
            return Err(to_js(Error::InvalidPrompt("generateBatch takes an array of inputs".into())));
        }
        let arr: js_sys::Array = inputs.unchecked_into();
        let mut parsed = Vec::with_capacity(arr.length() as usize);
        for (i, item) in arr.iter().enumerate() {
            let is_wrapped = item.is_object() && !js_sys::Array::is_array(&item) && js_sys::Reflect::has(&item, &"input".into()).unwrap_or(false);
            let (input, own) = if is_wrapped {
                let own: EngineGenerateOptions = from_js(item.clone(), "input options")?;
                (js_sys::Reflect::get(&item, &"input".into())?, own)
            } else {
                (item, EngineGenerateOptions::default())
            };
            let input = parse_input(input).map_err(|e| {
                let _ = js_sys::Reflect::set(&e, &"message".into(), &format!("input {i}: {}", js_sys::Error::from(e.clone()).message()).into());
                e
            })?;
            parsed.push((input, gen_options(own.or(&base))?));
        }
        let prompts: Vec<(Prompt, GenerateOptions)> = parsed
            .iter()
            .map(|(inp, o)| match inp {
                Input::Raw(t) => (Prompt::Raw(t), o.clone()),
                Input::Chat(m) => (Prompt::Chat(m), o.clone()),
            })
            .collect();
        let d = self.engine.options().kv;
        let window = count(bo.kv_window, "kvWindow", d.window.min(512), 1, 1 << 20)?;
        let kv = KvCacheConfig { window, sinks: count(bo.kv_sinks, "kvSinks", d.sinks.min(window.saturating_sub(1)), 0, 1 << 20)?, dtype: d.dtype, cold: None };
        let opts = BatchOptions { batch_size: count(bo.batch_size, "batchSize", 8, 1, 64)?, kv: Some(kv), share_prefix: bo.share_prefix.unwrap_or(true) };
        let b = self.engine.start_batch(&prompts, opts).map_err(to_js)?;
        let stats = to_value(&BatchStats::from(&b.stats()));
        self.batch = Some(b);
        Ok(stats)
    }

    /// Advances the batch one step: a [`BatchStepReply`],
    /// `{ events: [{ index, piece } | { index, done: true, piece, result }], done, stats }`.
    #[wasm_bindgen(js_name = batchStep)]
    pub fn batch_step(&mut self) -> Result<JsValue, JsValue> {
        let Some(b) = self.batch.as_mut() else {
            return Err(bad_option("no batch in progress"));
        };
        let events = match self.engine.step_batch(b) {
            Ok(ev) => ev,
            Err(e) => {
                self.batch = None;
                return Err(to_js(e));
            }
        };
        let reply = BatchStepReply { events: events.iter().map(BatchStepEvent::from).collect(), done: b.is_done(), stats: (&b.stats()).into() };
        if reply.done {
            self.batch = None;
        }
        Ok(to_value(&reply))
    }

    /// Prompt tokens of the current generation still to prefill.
    #[wasm_bindgen(js_name = prefillLeft)]
    pub fn prefill_left(&self) -> usize {
        self.session.as_ref().map(|s| s.prompt_tokens_left()).unwrap_or(0)
    }

    /// Statistics of the last generation and the cache: an [`EngineStats`].
    pub fn stats(&self) -> JsValue {
        to_value(&EngineStats::of(&self.engine, wasm_memory_bytes()))
    }

    /// The cache's history piece by piece with where each token lives: a [`MemoryView`].
    #[wasm_bindgen(js_name = memoryView)]
    pub fn memory_view(&self) -> JsValue {
        to_value(&MemoryView::from(self.engine.memory_view()))
    }

    /// Switches per-operation timing of the forward pass on (starting fresh) or off.
    #[wasm_bindgen(js_name = setProfiling)]
    pub fn set_profiling(&mut self, on: bool) {
        self.engine.set_profiling(on);
    }

    /// A [`Profile`], `{ tokens, msPerToken: { op: ms } }`, since profiling was switched on, or null.
    pub fn profile(&self) -> JsValue {
        match self.engine.profile() {
            Some(p) => to_value(&Profile::from(p)),
            None => JsValue::NULL,
        }
    }

    /// Empties the cache and the history.
    pub fn reset(&mut self) {
        self.session = None;
        self.drop_batch();
        self.engine.reset();
    }

    /// The whole cache as bytes (`llm.saveSession` writes them to OPFS).
    #[wasm_bindgen(js_name = saveSession)]
    pub fn save_session(&mut self) -> Result<Vec<u8>, JsValue> {
        if self.session.is_some() {
            return Err(bad_option("a generation is in progress; save after it"));
        }
        self.engine.save_session().map_err(to_js)
    }

    /// Replaces the cache with saved bytes (same model and cache options); a
    /// corrupt or foreign file is an error of kind `session`.
    #[wasm_bindgen(js_name = restoreSession)]
    pub fn restore_session(&mut self, bytes: &[u8]) -> Result<(), JsValue> {
        self.session = None;
        self.drop_batch();
        self.engine.restore_session(bytes).map_err(to_js)
    }
}
