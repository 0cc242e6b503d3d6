//! A tiny random-weight llama GGUF, written with candle's GGUF writer, so the
//! whole pipeline (loading, tokenizer, chat template, forward, cache, sampler)
//! is tested in seconds without the real model, natively and in the browser;
//! and the random inputs the kernel tests share (quantized blocks, f16 edge cases).

use crate::sampler::Rng;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// SmolLM2's chat template, verbatim.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The parts of a GGUF file, editable before writing (bad-input tests mutate them).
pub struct TinyGguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

/// Shape of the tiny model.
pub const N_LAYER: usize = 2;
pub const N_HEAD: usize = 4;
pub const N_HEAD_KV: usize = 2;
pub const N_EMBD: usize = 64;
pub const N_FF: usize = 256;

fn byte_chars() -> Vec<char> {
    let mut out = Vec::new();
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        out.push(if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        });
    }
    out
}

impl TinyGguf {
    /// A 2-layer model with GQA (4 query heads, 2 kv heads), a byte-level BPE
    /// vocabulary with a few merges, ChatML control tokens, tied embeddings,
    /// and weights in Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, F16 and F32.
    pub fn new(seed: u64) -> Self {
        Self::build(seed, false)
    }

    /// The same model with every weight stored as F32. Quantized weights make
    /// candle and kvchat quantize the activations to 8 bits, where a 1e-7
    /// difference in summation order occasionally flips a rounding; with F32
    /// weights two mathematically equal computations agree to ~1e-6, which is
    /// what the cache-equivalence tests need.
    pub fn new_f32(seed: u64) -> Self {
        Self::build(seed, true)
    }

    fn build(seed: u64, float_only: bool) -> Self {
        let mut rng = Rng::new(seed);
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        let mut types: Vec<i32> = vec![3, 3, 3];
        for c in byte_chars() {
            tokens.push(c.to_string());
            types.push(1);
        }
        let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a n", "Ġ w", "o u", "Ġ i", "Ġ c", "e n"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        let vocab = tokens.len();
        let str_arr = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
        let metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String("kvchat-tiny".into())),
            ("llama.block_count".into(), Value::U32(N_LAYER as u32)),
            ("llama.attention.head_count".into(), Value::U32(N_HEAD as u32)),
            ("llama.attention.head_count_kv".into(), Value::U32(N_HEAD_KV as u32)),
            ("llama.embedding_length".into(), Value::U32(N_EMBD as u32)),
            ("llama.feed_forward_length".into(), Value::U32(N_FF as u32)),
            ("llama.rope.freq_base".into(), Value::F32(10000.0)),
            ("llama.rope.dimension_count".into(), Value::U32((N_EMBD / N_HEAD) as u32)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
            ("llama.context_length".into(), Value::U32(2048)),
            ("llama.vocab_size".into(), Value::U32(vocab as u32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), str_arr(&tokens)),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect())),
            ("tokenizer.ggml.merges".into(), str_arr(&merges.iter().map(|s| s.to_string()).collect::<Vec<_>>())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.chat_template".into(), Value::String(CHATML_TEMPLATE.into())),
        ];
        let dev = Device::Cpu;
        let mut rand = |rows: usize, cols: usize, scale: f32| -> Tensor {
            let v: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale).collect();
            Tensor::from_vec(v, (rows, cols), &dev).unwrap()
        };
        let q = |t: Tensor, dt: GgmlDType| QTensor::quantize(&t, if float_only { GgmlDType::F32 } else { dt }).unwrap();
        let hd = N_EMBD / N_HEAD;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        tensors.push(("token_embd.weight".into(), q(rand(vocab, N_EMBD, 1.0), GgmlDType::Q8_0)));
        for l in 0..N_LAYER {
            let (attn_t, ffn_t, down_t) = if l == 0 {
                (GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4K)
            } else {
                (GgmlDType::Q4_1, GgmlDType::F16, GgmlDType::Q6K)
            };
            let p = format!("blk.{l}");
            let ones = |n| {
                let v: Vec<f32> = (0..n).map(|i| 1.0 + 0.1 * ((i % 7) as f32 - 3.0) / 3.0).collect();
                Tensor::from_vec(v, n, &dev).unwrap()
            };
            tensors.push((format!("{p}.attn_norm.weight"), q(ones(N_EMBD), GgmlDType::F32)));
            tensors.push((format!("{p}.attn_q.weight"), q(rand(N_HEAD * hd, N_EMBD, 0.5), attn_t)));
            tensors.push((format!("{p}.attn_k.weight"), q(rand(N_HEAD_KV * hd, N_EMBD, 0.5), attn_t)));
            tensors.push((format!("{p}.attn_v.weight"), q(rand(N_HEAD_KV * hd, N_EMBD, 0.5), attn_t)));
            tensors.push((format!("{p}.attn_output.weight"), q(rand(N_EMBD, N_HEAD * hd, 0.3), attn_t)));
            tensors.push((format!("{p}.ffn_norm.weight"), q(ones(N_EMBD), GgmlDType::F32)));
            tensors.push((format!("{p}.ffn_gate.weight"), q(rand(N_FF, N_EMBD, 0.3), ffn_t)));
            tensors.push((format!("{p}.ffn_up.weight"), q(rand(N_FF, N_EMBD, 0.3), ffn_t)));
            tensors.push((format!("{p}.ffn_down.weight"), q(rand(N_EMBD, N_FF, 0.3), down_t)));
        }
        tensors.push(("output_norm.weight".into(), q(rand(1, N_EMBD, 0.2).squeeze(0).unwrap().affine(1.0, 1.0).unwrap(), GgmlDType::F32)));
        Self { metadata, tensors }
    }

    /// Keeps only the first `n` layers.
    pub fn with_layers(mut self, n: usize) -> Self {
        self.tensors.retain(|(name, _)| match name.strip_prefix("blk.") {
            Some(rest) => rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i < n),
            None => true,
        });
        self.set("llama.block_count", Value::U32(n as u32));
        self
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.into(), value));
    }

    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|(n, _)| n != name);
    }

    /// The GGUF file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let md: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut out, &md, &ts).expect("writing to memory cannot fail");
        out.into_inner()
    }
}

/// The architectures' tiny models (the block variants on a few layers):
/// built from the llama one, renamed and given the tensors and keys the
/// architecture reads.
impl TinyGguf {
    /// Renamed to architecture `arch` (its `llama.*` keys moved to `arch.*`).
    pub fn as_arch(mut self, arch: &str) -> Self {
        for (k, _) in self.metadata.iter_mut() {
            if let Some(rest) = k.strip_prefix("llama.") {
                *k = format!("{arch}.{rest}");
            }
        }
        self.set("general.architecture", Value::String(arch.into()));
        self
    }

    /// Adds F32 vector `name` of `n` values around 1 (norm weights).
    pub fn add_norm(&mut self, name: String, n: usize, seed: usize) {
        let v: Vec<f32> = (0..n).map(|i| 1.0 + 0.3 * (((i * 7 + seed * 13) % 11) as f32 / 10.0 - 0.5)).collect();
        self.tensors.push((name, QTensor::quantize(&Tensor::from_vec(v, n, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()));
    }

    /// Adds F32 vector `name` of `n` small values around 0 (biases).
    pub fn add_bias(&mut self, name: String, n: usize, seed: usize) {
        let v: Vec<f32> = (0..n).map(|i| 0.2 * (((i * 5 + seed * 11) % 13) as f32 / 12.0 - 0.5)).collect();
        self.tensors.push((name, QTensor::quantize(&Tensor::from_vec(v, n, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()));
    }

    /// Copies layer `from`'s tensors (as F32) as layer `to`: a deeper model from the tiny one.
    pub fn copy_layer(&mut self, from: usize, to: usize) {
        let copies: Vec<(String, QTensor)> = self
            .tensors
            .iter()
            .filter_map(|(n, q)| n.strip_prefix(&format!("blk.{from}.")).map(|rest| (format!("blk.{to}.{rest}"), QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), GgmlDType::F32).unwrap())))
            .collect();
        self.tensors.extend(copies);
    }

    /// Every matrix re-quantized, in turn, to each format with an own kernel
    /// on every backend (the K-quants where the width is whole super-blocks of
    /// 256), so a model exercises all of them; vectors stay F32.
    pub fn requantized(mut self) -> Self {
        use crate::backend::cpu::quant::QFormat;
        let mut turn = 0;
        for (_, q) in self.tensors.iter_mut() {
            let dims = q.shape().dims().to_vec();
            if dims.len() != 2 {
                continue;
            }
            let fits: Vec<QFormat> = QFormat::ALL.into_iter().filter(|f| dims[1] % f.block_values() == 0).collect();
            let format = fits[turn % fits.len()];
            turn += 1;
            *q = QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), format.ggml()).unwrap();
        }
        self
    }

    /// A 2-layer qwen3 (QK-norm, NeoX RoPE) with F32 weights.
    pub fn qwen3(seed: u64) -> Self {
        let mut t = Self::new_f32(seed).as_arch("qwen3");
        for l in 0..N_LAYER {
            t.add_norm(format!("blk.{l}.attn_q_norm.weight"), N_EMBD / N_HEAD, l);
            t.add_norm(format!("blk.{l}.attn_k_norm.weight"), N_EMBD / N_HEAD, l + 5);
        }
        t
    }

    /// A 2-layer qwen2 (Q/K/V biases, NeoX RoPE) with F32 weights.
    pub fn qwen2(seed: u64) -> Self {
        let mut t = Self::new_f32(seed).as_arch("qwen2");
        let hd = N_EMBD / N_HEAD;
        for l in 0..N_LAYER {
            t.add_bias(format!("blk.{l}.attn_q.bias"), N_HEAD * hd, l);
            t.add_bias(format!("blk.{l}.attn_k.bias"), N_HEAD_KV * hd, l + 3);
            t.add_bias(format!("blk.{l}.attn_v.bias"), N_HEAD_KV * hd, l + 7);
        }
        t
    }

    /// A 6-layer gemma3 with F32 weights: five sliding layers of `window`
    /// positions and a global sixth (llama.cpp's pattern), QK-norm,
    /// post-norms, GELU, scaled embeddings, two RoPE bases.
    pub fn gemma3(seed: u64, window: u32) -> Self {
        let mut t = Self::new_f32(seed).as_arch("gemma3");
        for l in 2..6 {
            t.copy_layer(l % 2, l);
        }
        let hd = (N_EMBD / N_HEAD) as u32;
        t.set("gemma3.block_count", Value::U32(6));
        t.set("gemma3.attention.sliding_window", Value::U32(window));
        t.set("gemma3.attention.key_length", Value::U32(hd));
        t.set("gemma3.attention.value_length", Value::U32(hd));
        t.set("gemma3.rope.freq_base", Value::F32(1e6));
        for l in 0..6 {
            t.add_norm(format!("blk.{l}.attn_q_norm.weight"), N_EMBD / N_HEAD, l);
            t.add_norm(format!("blk.{l}.attn_k_norm.weight"), N_EMBD / N_HEAD, l + 1);
            t.add_norm(format!("blk.{l}.post_attention_norm.weight"), N_EMBD, l + 2);
            t.add_norm(format!("blk.{l}.post_ffw_norm.weight"), N_EMBD, l + 3);
        }
        t
    }
}

/// The default tiny model's bytes.
pub fn tiny_llama_gguf(seed: u64) -> Vec<u8> {
    TinyGguf::new(seed).to_bytes()
}

/// The fuzz targets' bodies (`fuzz/fuzz_targets/`), shared with the regression
/// replay in `tests/fuzz_regressions.rs` so both run exactly the same code.
pub mod fuzz {
    use super::TinyGguf;
    use crate::gguf::Gguf;
    use crate::tokenizer::{StreamDecoder, Tokenizer};
    use crate::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
    use candle_core::quantized::gguf_file::Value;

    /// Arbitrary bytes as a model file: a typed error or an engine that generates.
    pub fn gguf_load(data: &[u8]) {
        let opts = EngineOptions {
            kv: KvCacheConfig { window: 32, sinks: 2, dtype: KvDType::F32, cold: None },
            memory_budget: 64 << 20,
            ..Default::default()
        };
        if let Ok(mut e) = Engine::load(data, opts) {
            let g = GenerateOptions { max_tokens: 3, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let _ = e.generate(Prompt::Raw("the cat"), &g, |_| true);
        }
    }

    /// Tokenizer metadata from the input: first byte picks the pre-tokenizer, then
    /// `\n`-separated lines of `\x01`-separated tokens, merges, and a sample text.
    pub fn tokenizer_build(data: &[u8]) {
        if data.len() < 2 {
            return;
        }
        let pre = ["smollm", "gpt2", "llama-bpe", "default", "weird"][data[0] as usize % 5];
        let text = String::from_utf8_lossy(&data[1..]);
        let mut lines = text.split('\n');
        let tokens: Vec<String> = lines.next().unwrap_or("").split('\u{1}').map(|s| s.to_string()).collect();
        let merges: Vec<String> = lines.next().unwrap_or("").split('\u{1}').filter(|s| !s.is_empty()).map(|s| s.to_string()).collect();
        let types: Vec<Value> = (0..tokens.len()).map(|i| Value::I32(data.get(i + 1).map_or(1, |b| (b % 6) as i32))).collect();
        let sample = lines.next().unwrap_or("hello world 123");
        let mut g = TinyGguf::new(1);
        g.tensors.clear();
        g.set("tokenizer.ggml.pre", Value::String(pre.into()));
        g.set("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect()));
        g.set("tokenizer.ggml.token_type", Value::Array(types));
        g.set("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
        g.set("tokenizer.ggml.eos_token_id", Value::U32(data[0] as u32));
        let bytes = g.to_bytes();
        let Ok(gguf) = Gguf::parse(&bytes) else { return };
        let Ok(tok) = Tokenizer::from_gguf(&gguf) else { return };
        if let Ok(ids) = tok.encode(sample) {
            decode_stream(&tok, &ids);
            let _ = tok.decode(&ids);
        }
    }

    /// The tokenizer `tokenize` fuzzes against (the tiny model's).
    pub fn tiny_tokenizer() -> Tokenizer {
        let mut g = TinyGguf::new(1);
        g.tensors.clear();
        let bytes = g.to_bytes();
        Tokenizer::from_gguf(&Gguf::parse(&bytes).expect("the tiny GGUF parses")).expect("the tiny tokenizer builds")
    }

    /// Arbitrary text through encode/decode, and arbitrary ids through the decoders.
    pub fn tokenize(tok: &Tokenizer, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Ok(ids) = tok.encode(&text) {
            let _ = tok.decode(&ids);
        }
        let ids: Vec<u32> = data.chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32)).collect();
        decode_stream(tok, &ids);
        let _ = tok.decode(&ids);
    }

    fn decode_stream(tok: &Tokenizer, ids: &[u32]) -> String {
        let mut d = StreamDecoder::new();
        let mut out: String = ids.iter().map(|&id| d.push(tok, id)).collect();
        out.push_str(&d.finish());
        out
    }
}

/// `n` random GGUF blocks of `format` with realistic scales: the f16 scale
/// (and Q4_1's f16 minimum), then the quants.
pub fn random_q_blocks(format: crate::backend::cpu::quant::QFormat, n: usize, seed: u64) -> Vec<u8> {
    use crate::backend::cpu::quant::QFormat;
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * format.block_bytes());
    for _ in 0..n {
        out.extend_from_slice(&half::f16::from_f32(0.001 + rng.next_f64() as f32 * 0.02).to_le_bytes());
        if format == QFormat::Q4_1 {
            out.extend_from_slice(&half::f16::from_f32(-(rng.next_f64() as f32) * 0.1).to_le_bytes());
        }
        let nq = if format == QFormat::Q8_0 { 32 } else { 16 };
        out.extend((0..nq).map(|_| rng.next_u64() as u8));
    }
    out
}

/// f32 values whose rounding to f16 covers every case: each finite f16, the
/// midpoints between neighbours (ties) and their f32 neighbours, both signs,
/// subnormals, overflow to infinity.
pub fn f16_cases() -> Vec<f32> {
    use half::f16;
    let mut x = Vec::new();
    for h in 0u16..0x7c00 {
        let v = f16::from_bits(h).to_f32();
        let mid = ((v as f64 + f16::from_bits(h + 1).to_f32() as f64) / 2.0) as f32;
        for c in [v, mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits().saturating_sub(1))] {
            x.push(c);
            x.push(-c);
        }
    }
    x.extend([65504.0, 65519.0, 65520.0, 1e6, f32::MAX, f32::INFINITY, 1e-30, 2.980_232_2e-8, 2.980_232_6e-8, f32::MIN_POSITIVE, 1e-45]);
    x
}

/// One token attending `used` cached positions through the CPU cache, with
/// random queries, keys and values (SmolLM2-like magnitudes): the last
/// token's queries `[n_head * hd]`, the cache's keys and values laid out as
/// the GPU holds them (`[n_kv, cap, hd]`, f32) and the CPU's output.
pub struct AttentionCase {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub out: Vec<f32>,
}

pub fn attention_case(n_head: usize, n_kv: usize, hd: usize, cap: usize, used: usize, seed: u64) -> AttentionCase {
    use crate::kv_cache::{AttnScratch, KvCache, KvCacheConfig, KvDType};
    let mut rng = Rng::new(seed);
    let mut r = |s: f32| (rng.next_f64() as f32 - 0.5) * s;
    let mut cache = KvCache::uniform(KvCacheConfig { window: cap, sinks: 0, dtype: KvDType::F32, cold: None }, 1, n_kv, hd).expect("a valid cache");
    let mut scratch = AttnScratch::default();
    let (mut kc, mut vc) = (vec![0f32; n_kv * cap * hd], vec![0f32; n_kv * cap * hd]);
    let (mut out, mut q) = (vec![0f32; n_head * hd], Vec::new());
    for p in 0..used {
        q = (0..n_head * hd).map(|_| r(6.0)).collect();
        let k: Vec<f32> = (0..n_kv * hd).map(|_| r(6.0)).collect();
        let v: Vec<f32> = (0..n_kv * hd).map(|_| r(2.0)).collect();
        for g in 0..n_kv {
            kc[(g * cap + p) * hd..(g * cap + p + 1) * hd].copy_from_slice(&k[g * hd..(g + 1) * hd]);
            vc[(g * cap + p) * hd..(g * cap + p + 1) * hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
        }
        let plan = cache.plan(p);
        cache.attend(0, plan, &q, &[], &k, &v, None, &mut scratch, &mut out);
    }
    AttentionCase { q, k: kc, v: vc, out }
}
