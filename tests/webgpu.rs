#![cfg(not(target_arch = "wasm32"))]
//! The WebGPU backend against the CPU backend, natively on whatever adapter
//! wgpu finds (Mesa's lavapipe in CI: `apt-get install mesa-vulkan-drivers`).
//! Every test says why when it skips; CI sets KVCHAT_REQUIRE_GPU so they never do.

mod common;
use common::*;
use kvchat::backend::cpu::quant::{QActivations, QFormat, QMatrix};
use kvchat::backend::webgpu::{probe, GpuContext, GpuMatrix};
use half::f16;

fn gpu() -> Option<GpuContext> {
    match GpuContext::new_blocking() {
        Ok(c) => {
            eprintln!("WebGPU adapter: {} ({}, {})", c.info.name, c.info.backend, c.info.device_type);
            Some(c)
        }
        Err(e) => {
            assert!(std::env::var_os("KVCHAT_REQUIRE_GPU").is_none(), "KVCHAT_REQUIRE_GPU is set but {e}");
            eprintln!("SKIPPED: no GPU adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}

/// Random GGUF blocks of `format` with realistic scales (raw random blocks for
/// the 32-value formats; ggml's quantization of random weights for the others,
/// whose packed scales random bytes would not make realistic).
fn random_blocks(format: QFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    if matches!(format, QFormat::Q4_0 | QFormat::Q4_1 | QFormat::Q8_0) {
        return kvchat::testing::random_q_blocks(format, rows * cols / 32, seed);
    }
    let mut rng = kvchat::sampler::Rng::new(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * 0.05).collect();
    let t = candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap();
    candle_core::quantized::QTensor::quantize(&t, format.ggml()).unwrap().data().unwrap().to_vec()
}

fn random_x(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = kvchat::sampler::Rng::new(seed);
    (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect()
}

#[test]
fn matmul_kernels_equal_the_cpu_kernels() {
    let Some(ctx) = gpu() else { return };
    for format in QFormat::ALL {
        // Widths in whole K-quant super-blocks (256) for every format.
        for (rows, cols, t) in [(200, 768, 1), (67, 1536, 5), (129, 256, 8)] {
            let blocks = random_blocks(format, rows, cols, rows as u64);
            let cpu = QMatrix::from_blocks(format, rows, cols, &blocks).unwrap();
            let m = GpuMatrix::from_blocks(&ctx, "w", format, rows, cols, &blocks).unwrap();
            let x = random_x(t * cols, 9);
            let mut act = QActivations::default();
            let mut want = vec![0f32; t * rows];
            cpu.matmul(&x, t, &mut act, &mut want);
            let (got, q, sc) = pollster::block_on(probe::matmul(&ctx, &m, &x, t, probe::Input::Plain)).unwrap();
            let (cq, cd, cs, csx) = act.quantized();
            // The activation quantization is bit-exact with llama.cpp's.
            assert_eq!(&q[..], cq, "{format:?} quantized bytes");
            for b in 0..cd.len() {
                assert_eq!(sc[3 * b], cd[b], "{format:?} d of block {b}");
                assert_eq!(sc[3 * b + 1], cs[b], "{format:?} s of block {b}");
                assert!((sc[3 * b + 2] - csx[b]).abs() <= 1e-6 * csx[b].abs().max(1.0), "{format:?} sx of block {b}");
            }
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = max_abs_diff(&got, &want);
            let exact = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            eprintln!("{format:?} {rows}x{cols} t={t}: {exact}/{} bit-identical (max |gpu - cpu| = {err:.2e}, max |y| {scale:.1})", got.len());
            // The same float operations in the same order as the CPU kernels.
            assert_eq!(exact, got.len(), "{format:?} {rows}x{cols} t={t}");
            // Activations that are Q8 values times an f16 scale (token embeddings are):
            // v / d lands exactly on .5 often, so every rounding step must match.
            let emb = QMatrix::from_blocks(QFormat::Q8_0, t, cols, &random_blocks(QFormat::Q8_0, t, cols, 77)).unwrap();
            let mut xq = vec![0f32; t * cols];
            for (j, row) in xq.chunks_exact_mut(cols).enumerate() {
                emb.dequantize_row(j, row);
            }
            cpu.matmul(&xq, t, &mut act, &mut want);
            let (got, _, _) = pollster::block_on(probe::matmul(&ctx, &m, &xq, t, probe::Input::Plain)).unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?} {rows}x{cols} t={t}: dequantized rows");
        }
    }
}

#[test]
fn matrices_larger_than_a_binding_are_split_by_rows() {
    let Some(ctx) = gpu() else { return };
    // Pretend the device allows 4 KiB per binding: 200 rows of 18 Q4_1 blocks become 15 parts.
    let mut small = ctx.clone();
    small.info.max_storage_binding = 4096;
    let (rows, cols, t) = (200, 576, 2);
    let blocks = random_blocks(QFormat::Q4_1, rows, cols, 21);
    let m = GpuMatrix::from_blocks(&small, "w", QFormat::Q4_1, rows, cols, &blocks).unwrap();
    assert!(m.parts.len() > 1, "{} parts", m.parts.len());
    let whole = GpuMatrix::from_blocks(&ctx, "w", QFormat::Q4_1, rows, cols, &blocks).unwrap();
    assert_eq!(whole.parts.len(), 1);
    let x = random_x(t * cols, 22);
    let (a, _, _) = pollster::block_on(probe::matmul(&ctx, &m, &x, t, probe::Input::Plain)).unwrap();
    let (b, _, _) = pollster::block_on(probe::matmul(&ctx, &whole, &x, t, probe::Input::Plain)).unwrap();
    eprintln!("{} parts of at most {} rows", m.parts.len(), m.parts.iter().map(|p| p.rows).max().unwrap());
    assert_eq!(a, b, "split and whole matrices give the same product");
}

#[test]
fn matmul_kernels_on_the_real_weights_equal_the_cpu_kernels() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    let g = kvchat::gguf::Gguf::parse(&bytes).unwrap();
    let dev = candle_core::Device::Cpu;
    for (name, rows, cols) in [("blk.0.attn_q.weight", 576, 576), ("blk.3.ffn_down.weight", 576, 1536), ("blk.7.ffn_up.weight", 1536, 576), ("token_embd.weight", 49152, 576)] {
        let w = g.tensor(name, &[rows, cols], &dev).unwrap();
        let m = GpuMatrix::from_tensors(&ctx, name, &[&w]).unwrap();
        let cpu = QMatrix::from_blocks(m.format, rows, cols, &w.data().unwrap()).unwrap();
        let x = random_x(3 * cols, 31);
        let mut act = QActivations::default();
        let mut want = vec![0f32; 3 * rows];
        cpu.matmul(&x, 3, &mut act, &mut want);
        let (got, _, _) = pollster::block_on(probe::matmul(&ctx, &m, &x, 3, probe::Input::Plain)).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = max_abs_diff(&got, &want);
        let exact = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        eprintln!("{name} ({:?}, {rows}x{cols}): {exact}/{} bit-identical (max |gpu - cpu| = {err:.2e}, max |y| {scale:.1})", m.format, got.len());
        assert_eq!(exact, got.len(), "{name}");
    }
}

/// The GPU's fused preparation (`input` on `x`) then a Q4_1 matmul, against
/// the CPU's matmul of `h` (the same preparation done by the CPU's ops).
fn fused_input_equals_the_cpu(ctx: &GpuContext, what: &str, rows: usize, cols: usize, t: usize, x: &[f32], h: &[f32], input: probe::Input) {
    let blocks = random_blocks(QFormat::Q4_1, rows, cols, rows as u64);
    let cpu = QMatrix::from_blocks(QFormat::Q4_1, rows, cols, &blocks).unwrap();
    let m = GpuMatrix::from_blocks(ctx, "w", QFormat::Q4_1, rows, cols, &blocks).unwrap();
    let mut act = QActivations::default();
    let mut want = vec![0f32; t * rows];
    cpu.matmul(h, t, &mut act, &mut want);
    let (got, q, _) = pollster::block_on(probe::matmul(ctx, &m, x, t, input)).unwrap();
    let flips = q.iter().zip(act.quantized().0).filter(|(a, b)| a != b).count();
    let err = max_abs_diff(&got, &want);
    eprintln!("{what}+Q4_1: {flips} of {} quantized activations differ, max |gpu - cpu| = {err:.2e}", q.len());
    assert_eq!(flips, 0, "{what}: quantized activations");
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: products differ by up to {err}");
}

#[test]
fn rms_norm_then_matmul_equals_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let (cols, t) = (576, 3);
    let x = random_x(t * cols, 11);
    let w = random_x(cols, 12);
    let mut h = vec![0f32; t * cols];
    for j in 0..t {
        kvchat::backend::cpu::ops::rms_norm(&x[j * cols..(j + 1) * cols], &w, 1e-5, &mut h[j * cols..(j + 1) * cols]);
    }
    fused_input_equals_the_cpu(&ctx, "norm", 96, cols, t, &x, &h, probe::Input::Norm(&w, 1e-5));
}

#[test]
fn silu_then_matmul_equals_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let (cols, t) = (1536, 2);
    let x = random_x(t * 2 * cols, 13);
    let mut h = Vec::new();
    for j in 0..t {
        let mut g = x[j * 2 * cols..j * 2 * cols + cols].to_vec();
        kvchat::backend::cpu::ops::silu_mul(&mut g, &x[j * 2 * cols + cols..(j + 1) * 2 * cols]);
        h.extend(g);
    }
    fused_input_equals_the_cpu(&ctx, "silu", 64, cols, t, &x, &h, probe::Input::Silu);
}

// ---- The whole model on the real weights (skips, saying why, without `make model`). ----

use kvchat::{Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use serde_json::Value;

fn golden() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/golden-llamacpp.json")).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn margin(l: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; 2];
    for &v in l {
        if v > top[0] {
            top = [v, top[0]];
        } else if v > top[1] {
            top[1] = v;
        }
    }
    top[0] - top[1]
}

fn engines(bytes: &[u8], ctx: &GpuContext, window: usize, sinks: usize, dtype: KvDType) -> (Engine, Engine) {
    let opts = EngineOptions { kv: KvCacheConfig { window, sinks, dtype, cold: None }, ..Default::default() };
    (Engine::load(bytes, opts.clone()).unwrap(), Engine::load_gpu(bytes.to_vec(), opts, ctx).unwrap())
}

#[test]
fn greedy_output_on_the_golden_prompts_equals_the_cpu_backend() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    for dtype in [KvDType::F32, KvDType::F16] {
        let (mut cpu, mut gpu) = engines(&bytes, &ctx, 2048, 4, dtype);
        assert_eq!(gpu.backend(), "webgpu");
        for p in golden() {
            let id = p["id"].as_str().unwrap().to_string();
            let prompt = ids_of(&p["prompt_ids"]);
            let n = ids_of(&p["gen_ids"]).len();
            let opts = GenerateOptions { max_tokens: n, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let t0 = std::time::Instant::now();
            let a = cpu.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
            let t1 = std::time::Instant::now();
            let b = gpu.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
            let (dispatches, readback) = gpu.gpu_step_costs().unwrap();
            let same = a.generated_ids.iter().zip(&b.generated_ids).take_while(|(x, y)| x == y).count();
            eprintln!(
                "{dtype:?} prompt {id}: {same}/{n} greedy tokens equal; cpu {:.0} ms, gpu {:.0} ms ({:.1} decode tok/s, {dispatches} dispatches and {readback} bytes read back per decode step)",
                (t1 - t0).as_secs_f64() * 1e3,
                t1.elapsed().as_secs_f64() * 1e3,
                b.stats.decode_tokens_per_sec
            );
            if same < n {
                let mut seq = prompt.clone();
                seq.extend(&a.generated_ids[..same]);
                let l = cpu.logits(&seq).unwrap();
                panic!("{dtype:?} prompt {id}: the GPU's greedy tokens part from the CPU's at step {same} (CPU top-two margin there {:.3})", margin(&l));
            }
            assert_eq!(a.text, b.text);
        }
    }
}

#[test]
fn gpu_logits_follow_the_cpu_through_eviction_and_prefix_reuse() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    // A 48-token window with 4 sinks: 100 tokens wrap the ring twice.
    let (mut cpu, mut gpu) = engines(&bytes, &ctx, 48, 4, KvDType::F32);
    let ids: Vec<u32> = ids(100, 3, 49152);
    let a = cpu.logits_all(&ids).unwrap();
    let b = gpu.logits_all(&ids).unwrap();
    // Sinks, ring wrap-around and the sink-rotated queries: the same bits as the CPU.
    let differ: Vec<usize> = (0..a.len()).filter(|&j| a[j].iter().zip(&b[j]).any(|(x, y)| x.to_bits() != y.to_bits())).collect();
    eprintln!("window 48, 100 tokens: {} of 100 positions' logits differ from the CPU's", differ.len());
    assert!(differ.is_empty(), "positions {differ:?}, first max |gpu - cpu| {}", differ.first().map(|&j| max_abs_diff(&a[j], &b[j])).unwrap_or(0.0));
    assert_eq!(gpu.kv_stats().evicted, 100 - 48);
    // Prefix reuse: the same prompt again recomputes only its last token.
    let opts = GenerateOptions { max_tokens: 4, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let prompt = &ids[..30];
    let (mut cpu, mut gpu) = engines(&bytes, &ctx, 256, 4, KvDType::F32);
    let g1 = gpu.generate(Prompt::Ids(prompt), &opts, |_| true).unwrap();
    let g2 = gpu.generate(Prompt::Ids(prompt), &opts, |_| true).unwrap();
    assert_eq!(g2.stats.reused_tokens, 29);
    assert_eq!(g1.generated_ids, g2.generated_ids);
    let c = cpu.generate(Prompt::Ids(prompt), &opts, |_| true).unwrap();
    assert_eq!(g2.generated_ids, c.generated_ids, "prefix reuse");
}

#[test]
fn a_lost_device_moves_the_conversation_to_the_cpu() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    let (mut cpu, mut gpu) = engines(&bytes, &ctx, 512, 4, KvDType::F32);
    let opts = GenerateOptions { max_tokens: 24, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let p = golden()[0].clone();
    let prompt = ids_of(&p["prompt_ids"]);
    let want = cpu.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
    let mut s = gpu.start(Prompt::Ids(&prompt), &opts).unwrap();
    let mut steps = 0;
    let text = loop {
        if steps == 6 {
            gpu.lose_gpu_device();
        }
        steps += 1;
        if let kvchat::Step::Done(g) = gpu.step(&mut s).unwrap() {
            break *g;
        }
    };
    assert_eq!(gpu.backend(), "cpu");
    let why = gpu.fallback_reason().unwrap().to_string();
    eprintln!("after device.destroy(): {why}");
    assert!(why.contains("lost"), "{why}");
    let same = text.generated_ids.iter().zip(&want.generated_ids).take_while(|(a, b)| a == b).count();
    eprintln!("{same}/24 tokens equal to the CPU-only run: {:?}", text.text);
    assert_eq!(text.generated_ids.len(), 24);
    // The conversation continues on the CPU.
    let more = gpu.generate(Prompt::Ids(&[&prompt[..], &text.generated_ids[..]].concat()), &opts, |_| true).unwrap();
    assert!(more.stats.reused_tokens > prompt.len());
}

#[test]
fn top_k_readback_with_the_penalty_equals_the_cpu_sampler_on_the_same_logits() {
    use kvchat::gguf::Gguf;
    use kvchat::kv_cache::KvPolicy;
    use kvchat::model::gpu::{GpuOutput, Readback};
    use kvchat::model::{GpuLlama, LlamaConfig};
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    let g = Gguf::parse(&bytes).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let kv = KvCacheConfig { window: 128, sinks: 4, dtype: KvDType::F32, cold: None };
    let mut m = GpuLlama::load(&g, cfg.clone(), kv, &ctx).unwrap();
    let prompt = ids(40, 5, cfg.vocab_size);
    let mut recent = prompt[20..].to_vec();
    recent.sort_unstable();
    recent.dedup();
    let fresh = || KvPolicy::new(kv).unwrap();
    let GpuOutput::Logits(mut full) = m.run(&prompt, &mut fresh(), Readback::LastLogits, None).unwrap() else { panic!() };
    for &id in &recent {
        let l = &mut full[id as usize];
        *l = if *l > 0.0 { *l / 1.3 } else { *l * 1.3 };
    }
    let mut want: Vec<(u32, f32)> = full.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    want.truncate(64);
    let got = match m.run(&prompt, &mut fresh(), Readback::TopK, Some((&recent, 1.3))).unwrap() {
        GpuOutput::Candidates(c) => c,
        GpuOutput::PenalizedLogits(_) => panic!("the top-k overflowed on this input; pick another seed"),
        other => panic!("{other:?}"),
    };
    assert_eq!(got, want, "the GPU's 64 best (id, penalized logit) pairs");
    assert_eq!(m.last_readback_bytes, 520);
    let GpuOutput::Token(t) = m.run(&prompt, &mut fresh(), Readback::Argmax, Some((&recent, 1.3))).unwrap() else { panic!() };
    assert_eq!(t, want[0].0, "greedy with the penalty");
    // The engine samples from the candidates exactly as from the whole row.
    for seed in 0..20 {
        let sc = SamplerConfig { temperature: 0.9, top_k: 40, top_p: 0.95, min_p: 0.02, repeat_penalty: 1.0, repeat_last_n: 0, seed: Some(seed) };
        let mut a = kvchat::sampler::Sampler::new(sc).unwrap();
        let mut b = kvchat::sampler::Sampler::new(sc).unwrap();
        assert_eq!(a.sample_penalized(&full), b.sample_candidates(&got), "seed {seed}");
    }
    // A sampled generation through the engine reads back 520 bytes per step.
    let (_, mut e) = engines(&bytes, &ctx, 256, 4, KvDType::F32);
    let opts = GenerateOptions { max_tokens: 6, sampler: SamplerConfig { seed: Some(3), ..Default::default() }, ..Default::default() };
    e.generate(Prompt::Raw("Once upon a time"), &opts, |_| true).unwrap();
    assert_eq!(e.gpu_step_costs().unwrap().1, 520);
}

/// Runs a batch to the end: each input's generated ids, and the stats.
fn run_batch(e: &mut Engine, inputs: &[(Prompt, GenerateOptions)], opts: kvchat::BatchOptions) -> (Vec<Vec<u32>>, kvchat::BatchStats) {
    let mut b = e.start_batch(inputs, opts).unwrap();
    let mut ids = vec![Vec::new(); inputs.len()];
    while !b.is_done() {
        for ev in e.step_batch(&mut b).unwrap() {
            if let kvchat::BatchEvent::Done { index, generation } = ev {
                ids[index] = generation.generated_ids;
            }
        }
    }
    (ids, b.stats())
}

#[test]
fn batches_on_the_gpu_equal_each_sequence_alone() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    let (mut cpu, mut gpu) = engines(&bytes, &ctx, 512, 4, KvDType::F32);
    // The golden prompts as one batch of four slots (two queued inputs take freed slots).
    let g = golden();
    let prompts: Vec<Vec<u32>> = g.iter().map(|p| ids_of(&p["prompt_ids"])).collect();
    let opts = GenerateOptions { max_tokens: 24, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().enumerate().map(|(i, p)| (Prompt::Ids(p), GenerateOptions { max_tokens: 12 + 4 * i, ..opts.clone() })).collect();
    let t0 = std::time::Instant::now();
    let (got, stats) = run_batch(&mut gpu, &inputs, kvchat::BatchOptions { batch_size: 4, ..Default::default() });
    eprintln!(
        "GPU batch of {} golden prompts, 4 slots: {} tokens in {:.0} ms, decode {:.1} tok/s on {}",
        inputs.len(),
        stats.generated_tokens,
        t0.elapsed().as_secs_f64() * 1e3,
        stats.decode_tokens_per_sec,
        stats.backend
    );
    assert_eq!(stats.backend, "webgpu", "the batch runs on the GPU's batched passes");
    for (i, (p, o)) in inputs.iter().enumerate() {
        let alone = cpu.generate(*p, o, |_| true).unwrap().generated_ids;
        assert_eq!(got[i], alone, "golden prompt {i}: batched on the GPU vs alone on the CPU");
    }
    // A shared prefix copied on the GPU, and caches that wrap a 40-token ring with sinks.
    let kv = KvCacheConfig { window: 40, sinks: 4, dtype: KvDType::F32, cold: None };
    let doc = ids(20, 5, 49152);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| [doc.clone(), ids(3 + 2 * i, 40 + i as u64, 49152)].concat()).collect();
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), GenerateOptions { max_tokens: 36, ..opts.clone() })).collect();
    let bo = kvchat::BatchOptions { batch_size: 2, kv: Some(kv), share_prefix: true };
    let (on_gpu, stats) = run_batch(&mut gpu, &inputs, bo);
    assert_eq!((stats.backend, stats.shared_prefix_tokens), ("webgpu", 20));
    let (on_cpu, _) = run_batch(&mut cpu, &inputs, bo);
    assert_eq!(on_gpu, on_cpu, "a shared prefix and eviction: the GPU batch equals the CPU batch");
    assert_eq!(gpu.backend(), "webgpu", "the single-sequence path stays on the GPU");
    // A batch abandoned with a GPU job in flight (an abort): the engine serves the next request.
    let mut b = gpu.start_batch(&inputs, bo).unwrap();
    while !b.waiting() {
        gpu.step_batch(&mut b).unwrap();
    }
    gpu.end_batch(&mut b);
    assert!(gpu.step_batch(&mut b).is_err(), "an ended batch does not step");
    let (p, o) = &inputs[0];
    assert_eq!(gpu.generate(*p, o, |_| true).unwrap().generated_ids, cpu.generate(*p, o, |_| true).unwrap().generated_ids);
    // A batch whose caches use another storage type than the engine's runs on the CPU kernels.
    let bo = kvchat::BatchOptions { batch_size: 2, kv: Some(KvCacheConfig { dtype: KvDType::F16, ..kv }), share_prefix: true };
    let (f16_gpu, stats) = run_batch(&mut gpu, &inputs, bo);
    assert_eq!(stats.backend, "cpu");
    assert_eq!(f16_gpu, run_batch(&mut cpu, &inputs, bo).0);
}

#[test]
fn exp_kernel_equals_the_cpu_exp_bit_for_bit() {
    // Softmax and SiLU round through this exp on both backends; a shader
    // compiler that regroups its additions would change 1 in 4 results by an ulp.
    let Some(ctx) = gpu() else { return };
    let x: Vec<f32> = (0..200_000).map(|i| -100.0 + i as f32 * 0.000_95).collect();
    let y = pollster::block_on(probe::exp(&ctx, &x)).unwrap();
    let bad: Vec<(f32, f32, f32)> = x.iter().zip(&y).filter(|(a, b)| kvchat::backend::cpu::ops::exp(**a).to_bits() != b.to_bits()).map(|(a, b)| (*a, *b, kvchat::backend::cpu::ops::exp(*a))).collect();
    eprintln!("exp on [-100, 90]: {} of {} differ from the CPU's", bad.len(), x.len());
    assert!(bad.is_empty(), "x, gpu, cpu: {:?}", &bad[..bad.len().min(8)]);
}

#[test]
fn f16_rounding_equals_the_half_crate_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    let x = kvchat::testing::f16_cases();
    let y = pollster::block_on(probe::f16_round(&ctx, &x)).unwrap();
    let bad: Vec<(f32, f32, f32)> = x.iter().zip(&y).filter(|(a, b)| f16::from_f32(**a).to_f32().to_bits() != b.to_bits()).map(|(a, b)| (*a, *b, f16::from_f32(*a).to_f32())).collect();
    eprintln!("f16 rounding: {} of {} differ from the half crate", bad.len(), x.len());
    assert!(bad.is_empty(), "x, gpu, cpu: {:?}", &bad[..bad.len().min(8)]);
}

#[test]
fn attention_kernel_equals_the_cpu_cache_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    // SmolLM2's shape: 9 query heads over 3 kv heads of 64.
    let (n_head, n_kv, hd, cap) = (9, 3, 64, 128);
    for used in [1, 7, 8, 12, 61, 128] {
        let c = kvchat::testing::attention_case(n_head, n_kv, hd, cap, used, used as u64);
        let got = pollster::block_on(probe::attention(&ctx, n_head, n_kv, hd, cap, used, &c.q, &c.k, &c.v)).unwrap();
        let want = c.out;
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        eprintln!("attention over {used} keys: {differ} of {} outputs differ from the CPU's (max |d| {:.1e})", got.len(), max_abs_diff(&got, &want));
        assert_eq!(differ, 0, "{used} keys");
    }
}

/// The rope_kv kernel's block variants (biases, QK-norm, NeoX pairs) at
/// SmolLM2's, Qwen2's and Gemma 3's head sizes against the CPU's ops, in the
/// CPU pass's order: bias, per-head RMSNorm, rotation.
#[test]
fn rope_kernel_variants_equal_the_cpu_ops() {
    use kvchat::backend::cpu::ops;
    use kvchat::backend::webgpu::ops::RopeVariant;
    let Some(ctx) = gpu() else { return };
    let mut rng = kvchat::sampler::Rng::new(41);
    let mut r = |scale: f32| (rng.next_f64() as f32 * 2.0 - 1.0) * scale;
    for (n_head, n_kv, hd) in [(9, 3, 64), (14, 2, 64), (4, 1, 256)] {
        let (qd, kvd) = (n_head * hd, n_kv * hd);
        let rope = kvchat::model::rope::Rope::new(hd, 1e6);
        for bits in 0..8u32 {
            let variant = RopeVariant { bias: bits & 1 != 0, qk_norm: bits & 2 != 0, rope_halves: bits & 4 != 0 };
            let qkv: Vec<f32> = (0..qd + 2 * kvd).map(|_| r(8.0)).collect();
            let bias: Vec<f32> = (0..qd + 2 * kvd).map(|_| r(1.0)).collect();
            let norms: Vec<f32> = (0..2 * hd).map(|_| 1.0 + r(0.3)).collect();
            let (mut cos, mut sin) = (vec![0f32; hd / 2], vec![0f32; hd / 2]);
            rope.angles(1234, &mut cos, &mut sin);
            let input = probe::RopeInput { variant, bias: if variant.bias { &bias } else { &[] }, norms: if variant.qk_norm { &norms } else { &[] }, eps: 1e-6 };
            let (gq, gk, gv) = pollster::block_on(probe::rope(&ctx, n_head, n_kv, hd, &qkv, &cos, &sin, input)).unwrap();
            let mut want = qkv.clone();
            if variant.bias {
                ops::add_rows(&mut want, &bias);
            }
            for (h, head) in want[..qd + kvd].chunks_exact_mut(hd).enumerate() {
                if variant.qk_norm {
                    ops::rms_norm_in_place(head, &norms[if h < n_head { 0 } else { hd }..][..hd], 1e-6);
                }
                if variant.rope_halves {
                    ops::rope_halves(head, &cos, &sin);
                } else {
                    ops::rope(head, &cos, &sin);
                }
            }
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&gq, &want[..qd]), "{variant:?} hd {hd}: queries differ by up to {}", max_abs_diff(&gq, &want[..qd]));
            assert!(same(&gk, &want[qd..qd + kvd]), "{variant:?} hd {hd}: keys differ by up to {}", max_abs_diff(&gk, &want[qd..qd + kvd]));
            assert!(same(&gv, &want[qd + kvd..]), "{variant:?} hd {hd}: values");
        }
    }
}

/// Tiny models of every architecture (llama, qwen2's biases, qwen3's
/// QK-norm, gemma 3's sliding layers, post-norms, GELU and two RoPE bases),
/// every matrix in one of the seven formats: the GPU's logits are the CPU's
/// bits through the global window's evictions and the sliding rings' wraps,
/// in both cache types, and greedy generation after a chunked prefill agrees.
#[test]
fn every_architecture_and_format_on_the_gpu_equals_the_cpu() {
    use kvchat::testing::TinyGguf;
    let Some(ctx) = gpu() else { return };
    let models = [("llama", TinyGguf::new_f32(3)), ("qwen2", TinyGguf::qwen2(4)), ("qwen3", TinyGguf::qwen3(5)), ("gemma3", TinyGguf::gemma3(6, 8))];
    for (name, t) in models {
        let bytes = t.requantized().to_bytes();
        for dtype in [KvDType::F32, KvDType::F16] {
            // A 24-token window with 4 sinks: 60 tokens evict 36 of them; gemma 3's rings of 8 wrap 7 times.
            let (mut cpu, mut gpu) = engines(&bytes, &ctx, 24, 4, dtype);
            assert_eq!(gpu.backend(), "webgpu", "{name}");
            let ids = ids(60, 7, cpu.config().vocab_size);
            let a = cpu.logits_all(&ids).unwrap();
            let b = gpu.logits_all(&ids).unwrap();
            let differ: Vec<usize> = (0..a.len()).filter(|&j| a[j].iter().zip(&b[j]).any(|(x, y)| x.to_bits() != y.to_bits())).collect();
            eprintln!("{name} {dtype:?}: {} of {} positions' logits differ from the CPU's", differ.len(), a.len());
            assert!(differ.is_empty(), "{name} {dtype:?}: positions {differ:?}, first max |gpu - cpu| {}", differ.first().map(|&j| max_abs_diff(&a[j], &b[j])).unwrap_or(0.0));
            let opts = GenerateOptions { max_tokens: 20, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let (mut cpu, mut gpu) = engines(&bytes, &ctx, 24, 4, dtype);
            let c = cpu.generate(Prompt::Ids(&ids[..30]), &opts, |_| true).unwrap();
            let g = gpu.generate(Prompt::Ids(&ids[..30]), &opts, |_| true).unwrap();
            assert_eq!(c.generated_ids, g.generated_ids, "{name} {dtype:?}: greedy generation");
            assert_eq!(cpu.kv_stats(), gpu.kv_stats(), "{name} {dtype:?}: the cache's occupancy and bytes per attention kind");
            // A batch sharing a 20-token prefix (gemma 3's rings of 8 have wrapped in it), two slots.
            let doc = &ids[..20];
            let prompts: Vec<Vec<u32>> = (0..3).map(|i| [doc, &ids[30 + 3 * i..33 + 3 * i]].concat()).collect();
            let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), GenerateOptions { max_tokens: 16, ..opts.clone() })).collect();
            let bo = kvchat::BatchOptions { batch_size: 2, kv: None, share_prefix: true };
            let (on_gpu, stats) = run_batch(&mut gpu, &inputs, bo);
            assert_eq!(stats.backend, "webgpu", "{name}");
            let (on_cpu, _) = run_batch(&mut cpu, &inputs, bo);
            assert_eq!(on_gpu, on_cpu, "{name} {dtype:?}: the GPU batch equals the CPU batch");
        }
    }
}

/// The two extra models on the GPU: their first greedy tokens on a reference
/// prompt equal the CPU backend's (Gemma 3 270M: head size 256, sliding
/// layers, its 262,144-row Q8_0 output; Qwen2.5-Coder-0.5B: Q5_0, Q4_K and
/// Q6_K matrices, biases), with llama.cpp's f16 cache.
#[test]
fn the_extra_models_on_the_gpu_equal_the_cpu() {
    let Some(ctx) = gpu() else { return };
    for (file, fixture, prompt_id) in [("models/gemma-3-270m-q4_k_m.gguf", "tests/fixtures/gemma3-llamacpp.json", "g1"), ("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "tests/fixtures/qwen2-llamacpp.json", "q3")] {
        let Some(bytes) = extra_model(file) else { continue };
        let gold: Value = serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture)).unwrap()).unwrap();
        let g = gold["generate"].as_array().unwrap().iter().find(|g| g["id"] == prompt_id).unwrap();
        let prompt = ids_of(&g["prompt_ids"]);
        let (mut cpu, mut gpu) = engines(&bytes, &ctx, 512, 4, KvDType::F16);
        assert_eq!(gpu.backend(), "webgpu", "{file}");
        let opts = GenerateOptions { max_tokens: 12, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
        let t0 = std::time::Instant::now();
        let c = cpu.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
        let t1 = std::time::Instant::now();
        let b = gpu.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
        eprintln!("{file}: cpu {:.1} s, gpu {:.1} s; {:?}", (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64(), b.text);
        assert_eq!(c.generated_ids, b.generated_ids, "{file}");
        let l = cpu.logits(&prompt).unwrap();
        let lg = gpu.logits(&prompt).unwrap();
        assert!(l.iter().zip(&lg).all(|(x, y)| x.to_bits() == y.to_bits()), "{file}: the prompt's last logits differ by up to {}", max_abs_diff(&l, &lg));
    }
}

#[test]
fn structured_output_and_logprobs_on_the_gpu_equal_the_cpu() {
    let Some(bytes) = real_model() else { return };
    let Some(ctx) = gpu() else { return };
    let (mut cpu, mut gpu) = engines(&bytes, &ctx, 512, 4, KvDType::F32);
    let schema = serde_json::json!({ "type": "object", "properties": { "city": { "type": "string", "maxLength": 20 }, "population": { "type": "integer", "minimum": 0 } }, "required": ["city", "population"] });
    let messages = [kvchat::Message::new("user", "Name a big city and its population, as JSON.")];
    // The mask, the bias and the log-probabilities all read every logit: the GPU reads back the whole row.
    let opts = GenerateOptions {
        max_tokens: 40,
        sampler: SamplerConfig::greedy(),
        format: Some(kvchat::OutputFormat::JsonSchema(schema)),
        logprobs: Some(3),
        logit_bias: vec![(28, -2.0)],
        ..Default::default()
    };
    let a = cpu.generate(Prompt::Chat(&messages), &opts, |_| true).unwrap();
    let b = gpu.generate(Prompt::Chat(&messages), &opts, |_| true).unwrap();
    eprintln!("cpu {:?}\ngpu {:?}", a.text, b.text);
    assert_eq!(gpu.backend(), "webgpu");
    assert_eq!(a.generated_ids, b.generated_ids);
    assert_eq!(a.logprobs, b.logprobs, "the same logits give the same log-probabilities");
    assert!(serde_json::from_str::<serde_json::Value>(&b.text).unwrap()["city"].is_string());
}
