//! Tokenizer metadata from the input (tokens, types, merges, pre-tokenizer):
//! building it must give a typed error or a tokenizer that encodes and decodes.
#![no_main]
use candle_core::quantized::gguf_file::Value;
use kvchat::gguf::Gguf;
use kvchat::testing::TinyGguf;
use kvchat::tokenizer::{StreamDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
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
    let Ok(gguf) = Gguf::parse(&bytes) else { return };
    let Ok(tok) = Tokenizer::from_gguf(&gguf) else { return };
    if let Ok(ids) = tok.encode(sample) {
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for id in &ids {
            out.push_str(&d.push(&tok, *id));
        }
        out.push_str(&d.finish());
        let _ = tok.decode(&ids);
    }
});
