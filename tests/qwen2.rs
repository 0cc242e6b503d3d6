//! Parity with llama.cpp on Qwen2.5-Coder-0.5B-Instruct Q4_K_M (architecture `qwen2`:
//! Q/K/V biases, NeoX RoPE, the `qwen2` pre-tokenizer; Q5_0 / Q4_K / Q6_K / Q8_0 weights
//! through the own kernels), natively on the CPU. `make models`
//! fetches it; CI sets KVCHAT_REQUIRE_MODEL so these never skip there. The reference
//! (`fixtures/qwen2-llamacpp.json`) was made by llama-cpp-python 0.3.36 with
//! `../shared/reference/models/make_refs.py`. The tolerance is `real_model.rs`'s: greedy
//! tokens must agree wherever llama.cpp's own top-two margin is above the noise floor.

mod common;
use common::{assert_renders_chatml_prompt, extra_model, teacher_forced_mismatches};
use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use serde_json::Value;

const MODEL: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const NOISE: f64 = 0.75;

fn model() -> Option<Vec<u8>> {
    extra_model(MODEL)
}

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/qwen2-llamacpp.json")).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn engine(bytes: &[u8]) -> Engine {
    // llama.cpp's default cache type is f16 (the reference was made with it).
    let opts = EngineOptions { kv: KvCacheConfig { window: 1024, sinks: 4, dtype: KvDType::F16, cold: None }, ..Default::default() };
    Engine::load(bytes, opts).unwrap()
}

#[test]
fn qwen2_loads_with_its_block_and_is_refused_by_nothing_on_the_cpu() {
    let Some(bytes) = model() else { return };
    let e = engine(&bytes);
    let c = e.config();
    assert_eq!((c.arch, c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim), (kvchat::model::config::Architecture::Qwen2, 24, 896, 4864, 14, 2, 64));
    assert!(c.blocks.iter().all(|b| b.qkv_bias && b.rope_style == kvchat::model::block::RopeStyle::Halves && b.rope_base == 1e6));
    assert_eq!(e.tokenizer().eos(), Some(151645));
}

#[test]
fn qwen2_tokenization_equals_llama_cpp() {
    let Some(bytes) = model() else { return };
    let e = engine(&bytes);
    let r = reference();
    for c in r["tokenize"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        assert_eq!(e.tokenize(text).unwrap(), ids_of(&c["ids"]), "{text:?}");
    }
    for p in r["generate"].as_array().unwrap() {
        assert_eq!(e.tokenize(p["prompt"].as_str().unwrap()).unwrap(), ids_of(&p["prompt_ids"]), "prompt {}", p["id"]);
    }
}

#[test]
fn qwen2_greedy_tokens_match_llama_cpp_above_its_noise_floor() {
    let Some(bytes) = model() else { return };
    let mut e = engine(&bytes);
    let mut total = (0, 0);
    for p in reference()["generate"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap().to_string();
        let prompt = ids_of(&p["prompt_ids"]);
        let gold = ids_of(&p["gen_ids"]);
        let margin: Vec<f64> = p["margins"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
        // Teacher-forced: feed llama.cpp's tokens, compare each step's argmax.
        let mismatches = teacher_forced_mismatches(&mut e, &format!("prompt {id}"), &prompt, &gold, &margin, NOISE);
        total.0 += gold.len() - mismatches.len();
        total.1 += gold.len();
        println!("prompt {id}: teacher-forced mismatches (step, margin): {mismatches:?}");
    }
    println!("qwen2: teacher-forced argmax agreement {}/{}", total.0, total.1);
    assert!(total.0 * 100 >= total.1 * 90, "agreement below 90%");
}

#[test]
fn qwen2_free_running_greedy_text_equals_llama_cpp() {
    let Some(bytes) = model() else { return };
    let mut e = engine(&bytes);
    let r = reference();
    let p = r["generate"].as_array().unwrap().iter().find(|p| p["id"] == "q3").unwrap();
    let gold = ids_of(&p["gen_ids"]);
    let margin: Vec<f64> = p["margins"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
    let opts = GenerateOptions { max_tokens: gold.len(), sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let g = e.generate(Prompt::Raw(p["prompt"].as_str().unwrap()), &opts, |_| true).unwrap();
    let same = g.generated_ids.iter().zip(&gold).take_while(|(a, b)| a == b).count();
    let floor = margin.iter().position(|&m| m < NOISE).unwrap_or(gold.len());
    println!("q3: free-running equal for {same}/{} tokens (first margin < {NOISE} at step {floor}): {:?}", gold.len(), g.text);
    assert!(same >= floor, "diverged at step {same}");
}

#[test]
fn qwen2_chat_template_renders_the_reference_chat_prompts() {
    let Some(bytes) = model() else { return };
    let e = engine(&bytes);
    for p in reference()["generate"].as_array().unwrap() {
        assert_renders_chatml_prompt(&e, p["prompt"].as_str().unwrap());
    }
}

#[test]
fn qwen2_is_refused_with_a_typed_error_where_a_backend_cannot_run_it() {
    // The WebGPU kernels compute the llama block only: the block description says why.
    let Some(bytes) = model() else { return };
    let g = kvchat::gguf::Gguf::parse(&bytes).unwrap();
    let cfg = kvchat::model::LlamaConfig::from_gguf(&g).unwrap();
    let err = cfg.blocks[0].check("WebGPU", &kvchat::model::BlockSupport::default()).unwrap_err();
    assert!(matches!(err, kvchat::Error::Unsupported(_)), "{err}");
}
