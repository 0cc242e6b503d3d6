//! Arbitrary bytes as a model file: loading must return a typed error or an
//! engine, never panic or allocate past the budget; a loaded engine must generate.
#![no_main]
use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = EngineOptions {
        kv: KvCacheConfig { window: 32, sinks: 2, dtype: KvDType::F32 },
        memory_budget: 64 << 20,
        ..Default::default()
    };
    if let Ok(mut e) = Engine::load(data, opts) {
        let g = GenerateOptions { max_tokens: 3, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
        let _ = e.generate(Prompt::Raw("the cat"), &g, |_| true);
    }
});
