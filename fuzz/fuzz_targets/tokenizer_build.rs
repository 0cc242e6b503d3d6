//! Tokenizer metadata from the input (tokens, types, merges, pre-tokenizer):
//! building it must give a typed error or a tokenizer that encodes and decodes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvchat::testing::fuzz::tokenizer_build(data));
