//! Arbitrary text through the tokenizer, and arbitrary ids through the decoders.
#![no_main]
use kvchat::gguf::Gguf;
use kvchat::testing::TinyGguf;
use kvchat::tokenizer::{StreamDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let mut g = TinyGguf::new(1);
        g.tensors.clear();
        let bytes = g.to_bytes();
        Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = tok.encode(&text) {
        assert_eq!(tok.decode(&ids).len() <= text.len() * 4 + 64, true);
    }
    // Any ids, including ones outside the vocabulary, decode without panicking.
    let ids: Vec<u32> = data.chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32)).collect();
    let mut d = StreamDecoder::new();
    for &id in &ids {
        let _ = d.push(tok, id);
    }
    let _ = d.finish();
    let _ = tok.decode(&ids);
});
