//! Arbitrary text through the tokenizer, and arbitrary ids through the decoders.
#![no_main]
use std::sync::OnceLock;

static TOKENIZER: OnceLock<kvchat::tokenizer::Tokenizer> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let tok = TOKENIZER.get_or_init(kvchat::testing::fuzz::tiny_tokenizer);
    kvchat::testing::fuzz::tokenize(tok, data);
});
