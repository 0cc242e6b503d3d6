#![allow(dead_code)]
//! Helpers shared by the integration tests.

use kvchat::{Engine, EngineOptions, KvCacheConfig, KvDType};

/// The tiny model with F32 weights (exact arithmetic comparisons).
pub fn tiny_bytes() -> Vec<u8> {
    kvchat::testing::TinyGguf::new_f32(7).to_bytes()
}

pub fn opts(window: usize, sinks: usize, chunk: usize) -> EngineOptions {
    EngineOptions {
        kv: KvCacheConfig { window, sinks, dtype: KvDType::F32, cold: None },
        prefill_chunk: chunk,
        ..Default::default()
    }
}

pub fn tiny(window: usize, sinks: usize, chunk: usize) -> Engine {
    Engine::load(&tiny_bytes(), opts(window, sinks, chunk)).expect("tiny model loads")
}

/// Deterministic pseudo-random token ids in `3..vocab` (no control tokens).
pub fn ids(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut rng = kvchat::sampler::Rng::new(seed);
    (0..n).map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub const REAL_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The real model's bytes, or None with a message saying why the test skips.
pub fn real_model() -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(REAL_MODEL);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            if std::env::var("KVCHAT_REQUIRE_MODEL").is_ok() {
                panic!("{} is missing and KVCHAT_REQUIRE_MODEL is set: run `make model`", path.display());
            }
            eprintln!("SKIPPED: {} is missing (run `make model` to fetch it)", path.display());
            None
        }
    }
}

/// The bytes of an extra model `make models` fetches (`models/...`), or `None` (with a
/// note) when it is absent; under KVCHAT_REQUIRE_MODEL (CI) its absence fails the test.
pub fn extra_model(file: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) if std::env::var("KVCHAT_REQUIRE_MODEL").is_ok() => panic!("{} is missing and KVCHAT_REQUIRE_MODEL is set: run `make models`", path.display()),
        Err(_) => {
            eprintln!("SKIPPED: {} is missing (run `make models` to fetch it)", path.display());
            None
        }
    }
}

/// llama.cpp's greedy tokens fed after `prompt` (teacher forcing): every step where our argmax
/// differs, as `(step, llama.cpp's top-two margin there)`. Panics where a step differs although
/// llama.cpp's margin is at least `noise` (its own rounding noise floor).
pub fn teacher_forced_mismatches(e: &mut Engine, label: &str, prompt: &[u32], gold: &[u32], margin: &[f64], noise: f64) -> Vec<(usize, f64)> {
    let mut seq = prompt.to_vec();
    seq.extend(gold);
    let logits = e.logits_all(&seq).unwrap();
    let mut mismatches = Vec::new();
    for (s, &g) in gold.iter().enumerate() {
        let ours = kvchat::sampler::argmax(&logits[prompt.len() - 1 + s]);
        if ours != g {
            mismatches.push((s, margin[s]));
            assert!(margin[s] < noise, "{label} step {s}: ours {ours}, llama.cpp {g} with margin {}", margin[s]);
        }
    }
    mismatches
}

/// When `prompt` is a ChatML "system + user + assistant header" rendering, the engine's
/// template renders those two messages to exactly it.
pub fn assert_renders_chatml_prompt(e: &Engine, prompt: &str) {
    let Some(rest) = prompt.strip_prefix("<|im_start|>system\n") else { return };
    let (system, rest) = rest.split_once("<|im_end|>\n<|im_start|>user\n").unwrap();
    let user = rest.strip_suffix("<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let msgs = [kvchat::Message::new("system", system), kvchat::Message::new("user", user)];
    assert_eq!(e.render_chat(&msgs).unwrap(), prompt);
}
