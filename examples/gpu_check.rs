//! Quick GPU-vs-CPU comparison on the real model (development aid).
use kvchat::gguf::Gguf;
use kvchat::kv_cache::{KvCache, KvCacheConfig, KvDType, KvPolicy};
use kvchat::model::gpu::{GpuOutput, Readback};
use kvchat::model::{GpuLlama, Llama, LlamaConfig};
use kvchat::backend::webgpu::GpuContext;

fn main() {
    let bytes = std::fs::read("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let kv = KvCacheConfig { window: 64, sinks: 4, dtype: KvDType::F32, cold: None };
    let t0 = std::time::Instant::now();
    let ctx = GpuContext::new_blocking().unwrap();
    println!("adapter {:?} in {:?}", ctx.info, t0.elapsed());
    let t0 = std::time::Instant::now();
    let mut gpu = GpuLlama::load(&g, cfg.clone(), kv, &ctx).unwrap();
    println!("gpu load {:?}", t0.elapsed());
    let mut cpu = Llama::load(&g, cfg.clone(), &candle_core::Device::Cpu).unwrap();
    let mut cc = KvCache::new(kv, &cfg.windows(), cfg.n_head_kv, cfg.head_dim).unwrap();
    let mut gc = KvPolicy::new(kv).unwrap();
    let ids: Vec<u32> = (0..100).map(|i| 100 + (i * 37 % 900) as u32).collect();
    let mut i = 0;
    while i < ids.len() {
        let n = cc.next_chunk(16.min(ids.len() - i));
        let a = cpu.forward(&ids[i..i + n], &mut cc, true).unwrap().to_vec();
        let t0 = std::time::Instant::now();
        let GpuOutput::Logits(b) = gpu.run(&ids[i..i + n], &mut gc, Readback::AllLogits, None).unwrap() else { panic!() };
        let dt = t0.elapsed();
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        let v = cfg.vocab_size;
        let agree = (0..n).filter(|&r| kvchat::sampler::argmax(&a[r * v..(r + 1) * v]) == kvchat::sampler::argmax(&b[r * v..(r + 1) * v])).count();
        let first = a[..v].iter().zip(&b[..v]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!("chunk {i}+{n}: max|cpu-gpu| = {d:.5} mean {mean:.5} first-row max {first:.5} top1 agree {agree}/{n} ({dt:?}, {} dispatches)", gpu.last_dispatches);
        i += n;
    }
    let t0 = std::time::Instant::now();
    let r = gpu.run(&[5], &mut gc, Readback::Argmax, None).unwrap();
    let a = cpu.forward(&[5], &mut cc, false).unwrap().to_vec();
    println!("argmax gpu {:?} cpu {} ({:?})", r, kvchat::sampler::argmax(&a), t0.elapsed());
}
