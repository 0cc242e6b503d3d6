//! Arbitrary bytes as a model file: loading must return a typed error or an
//! engine, never panic or allocate past the budget; a loaded engine must generate.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvchat::testing::fuzz::gguf_load(data));
