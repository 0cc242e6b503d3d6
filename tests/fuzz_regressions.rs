//! Replays the fuzzers' kept inputs (tests/fuzz_corpus/<target>/, small files:
//! the seeds, a minimized slice of the corpus, and any crash ever found) through
//! the same code the fuzz targets run, so CI checks them without libFuzzer.

use kvchat::gguf::Gguf;
use kvchat::testing::TinyGguf;
use kvchat::tokenizer::{StreamDecoder, Tokenizer};
use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{} is missing", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

#[test]
fn gguf_load_inputs() {
    for (name, data) in inputs("gguf_load") {
        let opts = EngineOptions { kv: KvCacheConfig { window: 32, sinks: 2, dtype: KvDType::F32 }, memory_budget: 64 << 20, ..Default::default() };
        if let Ok(mut e) = Engine::load(&data, opts) {
            let g = GenerateOptions { max_tokens: 3, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let _ = e.generate(Prompt::Raw("the cat"), &g, |_| true);
        }
        eprintln!("ok {name}");
    }
}

#[test]
fn tokenizer_build_inputs() {
    use candle_core::quantized::gguf_file::Value;
    for (name, data) in inputs("tokenizer_build") {
        if data.len() < 2 {
            continue;
        }
        let pre = ["smollm", "gpt2", "llama-bpe", "default", "weird"][data[0] as usize % 5];
        let text = String::from_utf8_lossy(&data[1..]);
        let mut lines = text.split('\n');
        let tokens: Vec<String> = lines.next().unwrap_or("").split('\u{1}').map(|s| s.to_string()).collect();
        let merges: Vec<String> = lines.next().unwrap_or("").split('\u{1}').filter(|s| !s.is_empty()).map(|s| s.to_string()).collect();
        let types: Vec<Value> = tokens.iter().enumerate().map(|(i, _)| Value::I32(data.get(i + 1).map_or(1, |b| (b % 6) as i32))).collect();
        let sample = lines.next().unwrap_or("hello world 123");
        let mut g = TinyGguf::new(1);
        g.tensors.clear();
        g.set("tokenizer.ggml.pre", Value::String(pre.into()));
        g.set("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()));
        g.set("tokenizer.ggml.token_type", Value::Array(types));
        g.set("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
        g.set("tokenizer.ggml.eos_token_id", Value::U32(data[0] as u32));
        let bytes = g.to_bytes();
        if let Ok(gguf) = Gguf::parse(&bytes) {
            if let Ok(tok) = Tokenizer::from_gguf(&gguf) {
                if let Ok(ids) = tok.encode(sample) {
                    let mut d = StreamDecoder::new();
                    for id in &ids {
                        d.push(&tok, *id);
                    }
                    d.finish();
                }
            }
        }
        eprintln!("ok {name}");
    }
}

#[test]
fn tokenize_inputs() {
    let mut g = TinyGguf::new(1);
    g.tensors.clear();
    let bytes = g.to_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    for (name, data) in inputs("tokenize") {
        let text = String::from_utf8_lossy(&data);
        if let Ok(ids) = tok.encode(&text) {
            let _ = tok.decode(&ids);
        }
        let ids: Vec<u32> = data.chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32)).collect();
        let mut d = StreamDecoder::new();
        for &id in &ids {
            d.push(&tok, id);
        }
        d.finish();
        eprintln!("ok {name}");
    }
}
