//! Parity with llama.cpp on the real default model (SmolLM2-135M-Instruct Q4_1).
//! `make model` fetches it; CI sets KVCHAT_REQUIRE_MODEL so these never skip there.
//!
//! About the tolerance: llama.cpp and kvchat both quantize every activation
//! vector to 8 bits before each matrix product. A 1e-7 difference in float
//! summation order occasionally flips one rounding, and 30 layers amplify it:
//! recomputing llama.cpp's own forward pass with f64 instead of f32
//! accumulation moves its logits by up to 0.43 (mean 0.13) on the very first
//! token, and the effect compounds along the sequence: over the 87 positions
//! of golden prompt d, kvchat's logits differ from llama.cpp's by up to 1.6
//! (mean 0.1-0.3 per position) while perplexity agrees to 0.2 %. Changing
//! only kvchat's summation order (candle's matmuls → the own attention loop)
//! moved its logits by as much. Greedy parity is therefore asserted wherever
//! llama.cpp's own top-two margin is above a noise floor (NOISE), and the
//! report prints every step.

mod common;
use common::*;
use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use serde_json::Value;

const NOISE: f64 = 0.75;

fn golden() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/golden-llamacpp.json")).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn engine(bytes: &[u8], dtype: KvDType) -> Engine {
    // llama.cpp's default cache type is f16 (the golden file was made with it).
    let opts = EngineOptions { kv: KvCacheConfig { window: 2048, sinks: 4, dtype, cold: None }, ..Default::default() };
    Engine::load(bytes, opts).unwrap()
}

#[test]
fn prompt_ids_equal_llama_cpp() {
    let Some(bytes) = real_model() else { return };
    let e = engine(&bytes, KvDType::F16);
    for p in golden() {
        let ids = e.tokenize(p["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(ids, ids_of(&p["prompt_ids"]), "prompt {}", p["id"]);
    }
}

#[test]
fn tokenization_of_awkward_strings_equals_llama_cpp() {
    let Some(bytes) = real_model() else { return };
    let e = engine(&bytes, KvDType::F16);
    let cases: Vec<Value> = serde_json::from_str(include_str!("fixtures/tokenize-llamacpp.json")).unwrap();
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(e.tokenize(text).unwrap(), ids_of(&c["ids"]), "{text:?}");
        // And decoding gives the text back (no control tokens in these).
        if !text.contains("<|") {
            assert_eq!(e.detokenize(&ids_of(&c["ids"])), text);
        }
    }
}

#[test]
fn greedy_tokens_match_llama_cpp_above_its_noise_floor() {
    let Some(bytes) = real_model() else { return };
    for dtype in [KvDType::F16, KvDType::F32] {
        let mut e = engine(&bytes, dtype);
        let mut total = (0, 0);
        for p in golden() {
            let id = p["id"].as_str().unwrap().to_string();
            let prompt = ids_of(&p["prompt_ids"]);
            let gold = ids_of(&p["gen_ids"]);
            let margin: Vec<f64> = p["top1_top2_logit_margin"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
            // Teacher-forced: feed llama.cpp's tokens, compare each step's argmax.
            let mismatches = teacher_forced_mismatches(&mut e, &format!("{dtype:?} prompt {id}"), &prompt, &gold, &margin, NOISE);
            total.0 += gold.len() - mismatches.len();
            total.1 += gold.len();
            // Free-running greedy generation through the public API.
            e.reset();
            let opts = GenerateOptions { max_tokens: gold.len(), sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let g = e.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
            let same = g.generated_ids.iter().zip(&gold).take_while(|(a, b)| a == b).count();
            let floor = margin.iter().position(|&m| m < NOISE).unwrap_or(gold.len());
            println!(
                "{dtype:?} prompt {id}: free-running equal for {same}/{} tokens (first llama.cpp margin < {NOISE} at step {floor}); teacher-forced mismatches (step, margin): {mismatches:?}",
                gold.len()
            );
            assert!(same >= floor, "{dtype:?} prompt {id}: diverged at step {same}, llama.cpp's margin there is {}", margin[same]);
        }
        println!("{dtype:?}: teacher-forced argmax agreement {}/{}", total.0, total.1);
        assert!(total.0 * 100 >= total.1 * 90, "agreement below 90%");
    }
}

#[test]
fn chat_template_reproduces_the_golden_chat_prompts() {
    let Some(bytes) = real_model() else { return };
    let e = engine(&bytes, KvDType::F16);
    // The golden ChatML prompts are "system + user + assistant header" renderings.
    for p in golden() {
        assert_renders_chatml_prompt(&e, p["prompt"].as_str().unwrap());
    }
}

#[test]
fn perplexity_matches_llama_cpp_and_sinks_matter() {
    let Some(bytes) = real_model() else { return };
    let text = match std::fs::read_to_string("/usr/share/common-licenses/GPL-3") {
        Ok(t) => t,
        Err(_) => {
            assert!(std::env::var("KVCHAT_REQUIRE_MODEL").is_err(), "/usr/share/common-licenses/GPL-3 is missing and KVCHAT_REQUIRE_MODEL is set");
            eprintln!("SKIPPED: /usr/share/common-licenses/GPL-3 is missing");
            return;
        }
    };
    let ppl = |window: usize, sinks: usize, n: usize| {
        let opts = EngineOptions { kv: KvCacheConfig { window, sinks, dtype: KvDType::F32, cold: None }, ..Default::default() };
        let mut e = Engine::load(&bytes, opts).unwrap();
        let ids = e.tokenize(&text).unwrap();
        let (scored, nll) = e.perplexity(&ids[..n], |_, _| {}).unwrap();
        (nll / scored as f64).exp()
    };
    // llama.cpp: 17.949 over the first 4096 tokens with the full context.
    let full = ppl(4096, 4, 4096);
    println!("perplexity, first 4096 tokens, full cache: {full:.3} (llama.cpp 17.949)");
    assert!((full / 17.949 - 1.0).abs() < 0.02, "{full}");
}
