//! Prints what each hostile input produces (the messages users see).
use candle_core::quantized::gguf_file::Value;
use kvchat::testing::TinyGguf;
use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};

fn show(what: &str, r: Result<Engine, kvchat::Error>) {
    match r {
        Ok(_) => println!("{what}: loads"),
        Err(e) => println!("{what}: [{}] {e}", e.kind()),
    }
}

fn main() {
    let load = |b: &[u8]| Engine::load(b, EngineOptions::default());
    let tiny = TinyGguf::new(1).to_bytes();
    show("empty file", load(b""));
    show("3 bytes", load(b"GGU"));
    show("HTML page", load(b"<!doctype html><p>404</p>"));
    let mut v1 = tiny.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    show("GGUF v1", load(&v1));
    show("truncated header", load(&tiny[..300]));
    show("truncated data", load(&tiny[..tiny.len() - 100]));
    let mut x = tiny.clone();
    x[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    show("absurd tensor count", load(&x));
    let mut g = TinyGguf::new(1);
    g.set("general.architecture", Value::String("mamba".into()));
    show("architecture mamba", load(&g.to_bytes()));
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.model", Value::String("llama".into()));
    show("SPM tokenizer", load(&g.to_bytes()));
    let mut g = TinyGguf::new(1);
    g.set("llama.feed_forward_length", Value::U32(128));
    show("shape contradicts metadata", load(&g.to_bytes()));
    let mut g = TinyGguf::new(1);
    g.remove_tensor("blk.1.ffn_up.weight");
    show("missing tensor", load(&g.to_bytes()));
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.merges", Value::Array(vec![Value::String("e n".into()), Value::String("en e".into())]));
    show("merge outside vocabulary", load(&g.to_bytes()));
    show("window smaller than sinks", Engine::load(&tiny, EngineOptions { kv: KvCacheConfig { window: 4, sinks: 8, dtype: KvDType::F32, cold: None }, ..Default::default() }));
    show("memory budget 1 KiB", Engine::load(&tiny, EngineOptions { memory_budget: 1024, ..Default::default() }));
    let mut e = load(&tiny).unwrap();
    let g = GenerateOptions { max_tokens: 4, sampler: SamplerConfig::greedy(), ..Default::default() };
    for (what, p) in [("empty prompt", ""), ("only special tokens", "<|im_start|><|im_end|>")] {
        match e.generate(Prompt::Raw(p), &g, |_| true) {
            Ok(r) => println!("{what}: ok, {} tokens generated", r.generated_ids.len()),
            Err(err) => println!("{what}: [{}] {err}", err.kind()),
        }
    }
    let bad = GenerateOptions { sampler: SamplerConfig { temperature: f32::NAN, ..Default::default() }, ..g.clone() };
    match e.generate(Prompt::Raw("x"), &bad, |_| true) {
        Ok(_) => println!("NaN temperature: ok"),
        Err(err) => println!("NaN temperature: [{}] {err}", err.kind()),
    }
}
