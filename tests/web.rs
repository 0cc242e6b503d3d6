//! The engine inside a real browser (`wasm-pack test --headless --chrome`), and
//! the same tiny-model checks natively (`cargo test`): cache invariants,
//! streaming, errors. In the browser, the real model is fetched from the
//! static server that `make test-wasm` starts (KVCHAT_MODEL_URL at build time)
//! and checked against llama.cpp's golden tokens like the native parity test.

use kvchat::testing::TinyGguf;
use kvchat::{Engine, EngineOptions, Error, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use wasm_bindgen_test::*;

// In a dedicated worker, as the engine runs in kvchat: the page stays responsive to the
// WebDriver polling while a long test computes.
wasm_bindgen_test_configure!(run_in_dedicated_worker);

// The hostile-file suite, once more in wasm32 (a 32-bit usize): natively it is its own test binary.
#[cfg(target_arch = "wasm32")]
#[path = "bad_inputs.rs"]
mod bad_inputs;

// The cold tier's bits, checked against the same fixture as natively.
#[cfg(target_arch = "wasm32")]
#[path = "cold_bits.rs"]
mod cold_bits;

/// The real model's URL (`make test-wasm` sets KVCHAT_MODEL_URL at build time), or None
/// with the reason logged; with KVCHAT_REQUIRE_MODEL set at build time (as `make test-wasm`
/// does) a missing URL fails the test instead of skipping it.
#[cfg(target_arch = "wasm32")]
fn model_url() -> Option<&'static str> {
    let url = option_env!("KVCHAT_MODEL_URL");
    if url.is_none() {
        assert!(option_env!("KVCHAT_REQUIRE_MODEL").is_none(), "KVCHAT_MODEL_URL was not set at build time and KVCHAT_REQUIRE_MODEL is");
        web_sys::console::log_1(&"SKIPPED: KVCHAT_MODEL_URL was not set at build time (run `make test-wasm`)".into());
    }
    url
}

fn tiny(window: usize, sinks: usize, chunk: usize) -> Engine {
    let opts = EngineOptions { kv: KvCacheConfig { window, sinks, dtype: KvDType::F32, cold: None }, prefill_chunk: chunk, ..Default::default() };
    Engine::load(&TinyGguf::new_f32(7).to_bytes(), opts).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn seq(n: usize) -> Vec<u32> {
    let mut rng = kvchat::sampler::Rng::new(42);
    (0..n).map(|_| 3 + (rng.next_u64() % 250) as u32).collect()
}

#[wasm_bindgen_test(unsupported = test)]
fn cached_logits_equal_uncached_in_the_browser() {
    let mut e = tiny(64, 4, 8);
    let s = seq(30);
    let mut inc = vec![e.logits(&s[..1]).unwrap()];
    for t in &s[1..] {
        inc.push(e.append(&[*t]).unwrap());
    }
    for i in 0..s.len() {
        let fresh = e.logits(&s[..=i]).unwrap();
        assert!(max_abs_diff(&fresh, &inc[i]) < 1e-4, "position {i}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn eviction_and_rope_after_eviction_in_the_browser() {
    let bytes = TinyGguf::new_f32(7).with_layers(1).to_bytes();
    let (window, sinks) = (12, 3);
    let opts = EngineOptions { kv: KvCacheConfig { window, sinks, dtype: KvDType::F32, cold: None }, prefill_chunk: 5, ..Default::default() };
    let mut e = Engine::load(&bytes, opts).unwrap();
    let s = seq(40);
    let streamed = e.logits_all(&s).unwrap();
    let kv = e.kv_stats();
    assert_eq!((kv.used, kv.evicted, kv.sinks), (window, s.len() - window, sinks));
    for n in window + 1..=s.len() {
        let mut kept = s[..sinks].to_vec();
        kept.extend_from_slice(&s[n - (window - sinks)..n]);
        let fresh = e.logits(&kept).unwrap();
        assert!(max_abs_diff(&fresh, &streamed[n - 1]) < 1e-4, "after {n} tokens");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn long_generation_keeps_the_cache_bounded() {
    let mut e = tiny(32, 4, 16);
    let bytes = e.kv_stats().bytes;
    let opts = GenerateOptions { max_tokens: 300, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let mut pieces = String::new();
    let g = e.generate(Prompt::Raw("the cat"), &opts, |p| {
        pieces.push_str(p);
        true
    }).unwrap();
    assert_eq!(pieces, g.text);
    assert_eq!(g.kv.used, 32);
    assert_eq!(g.kv.bytes, bytes);
    assert!(g.kv.evicted > 250);
}

#[wasm_bindgen_test(unsupported = test)]
fn bad_bytes_give_typed_errors_and_the_engine_loads_after() {
    assert!(matches!(Engine::load(b"", EngineOptions::default()), Err(Error::Gguf(_))));
    assert!(matches!(Engine::load(b"<html>not found</html>", EngineOptions::default()), Err(Error::Gguf(_))));
    let b = kvchat::testing::tiny_llama_gguf(3);
    assert!(Engine::load(&b[..b.len() / 2], EngineOptions::default()).is_err());
    let mut e = Engine::load(&b, EngineOptions::default()).unwrap();
    assert!(matches!(e.generate(Prompt::Raw(""), &GenerateOptions::default(), |_| true), Err(Error::InvalidPrompt(_))));
    assert!(e.generate(Prompt::Raw("the"), &GenerateOptions { max_tokens: 3, ..Default::default() }, |_| true).is_ok());
}

#[cfg(target_arch = "wasm32")]
mod real_model {
    use super::*;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    #[wasm_bindgen(inline_js = "export async function fetch_bytes(url) { const r = await fetch(url); if (!r.ok) throw new Error(`HTTP ${r.status} for ${url}`); return new Uint8Array(await r.arrayBuffer()); }")]
    extern "C" {
        #[wasm_bindgen(catch)]
        async fn fetch_bytes(url: &str) -> Result<JsValue, JsValue>;
    }

    const NOISE: f64 = 0.75; // the same floor as tests/real_model.rs, which explains it

    #[wasm_bindgen_test]
    async fn golden_prompts_match_llama_cpp_in_the_browser() {
        let Some(url) = crate::model_url() else { return };
        let bytes: js_sys::Uint8Array = fetch_bytes(url).await.expect("the model server answers").unchecked_into();
        let bytes = bytes.to_vec();
        let opts = EngineOptions { kv: KvCacheConfig { window: 2048, sinks: 4, dtype: KvDType::F16, cold: None }, ..Default::default() };
        let mut e = Engine::load(&bytes, opts).unwrap();
        drop(bytes);
        let golden: Vec<serde_json::Value> = serde_json::from_str(include_str!("fixtures/golden-llamacpp.json")).unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
        let (mut agree, mut total) = (0, 0);
        for p in &golden {
            let prompt = ids(&p["prompt_ids"]);
            assert_eq!(e.tokenize(p["prompt"].as_str().unwrap()).unwrap(), prompt);
            let gold = ids(&p["gen_ids"]);
            let margin: Vec<f64> = p["top1_top2_logit_margin"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
            // Teacher-forced argmax, every step.
            let mut all = prompt.clone();
            all.extend(&gold);
            let logits = e.logits_all(&all).unwrap();
            for (s, &g) in gold.iter().enumerate() {
                let ours = kvchat::sampler::argmax(&logits[prompt.len() - 1 + s]);
                total += 1;
                if ours == g {
                    agree += 1;
                } else {
                    assert!(margin[s] < NOISE, "prompt {} step {s}: llama.cpp's margin {} is above the noise floor", p["id"], margin[s]);
                }
            }
            // Free-running greedy through the public API, up to llama.cpp's first near-tie.
            e.reset();
            let floor = margin.iter().position(|&m| m < NOISE).unwrap_or(gold.len());
            let opts = GenerateOptions { max_tokens: floor.max(1), sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
            let g = e.generate(Prompt::Ids(&prompt), &opts, |_| true).unwrap();
            assert_eq!(g.generated_ids[..floor], gold[..floor], "prompt {}", p["id"]);
        }
        web_sys::console::log_1(&format!("teacher-forced agreement with llama.cpp in the browser: {agree}/{total}").into());
        assert!(agree * 100 >= total * 90);
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn f16_kernels_convert_every_value_exactly() {
    // The f16 KV cache's conversion (simd128 in the browser) against the half crate.
    let src: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let mut dst = vec![0f32; src.len()];
    kvchat::backend::cpu::ops::f16_to_f32_slice(&src, &mut dst, false);
    for (h, f) in src.iter().zip(&dst) {
        assert!(if h.is_nan() { f.is_nan() } else { f.to_bits() == h.to_f32().to_bits() }, "{:#06x} -> {f}", h.to_bits());
    }
    let finite: Vec<half::f16> = src.into_iter().filter(|h| h.is_finite()).collect();
    let mut dst = vec![0f32; finite.len()];
    kvchat::backend::cpu::ops::f16_to_f32_slice(&finite, &mut dst, true);
    for (h, f) in finite.iter().zip(&dst) {
        assert_eq!(f.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn f16_kernels_round_like_the_half_crate() {
    // Every 4099th f32 bit pattern (both signs, all exponents) and the edges of the f16 range.
    let mut x: Vec<f32> = (0..=u32::MAX / 4099).map(|i| f32::from_bits(i * 4099)).collect();
    for b in [0x3880_0000u32, 0x387F_FFFF, 0x477F_EFFF, 0x477F_F000, 0x477F_E000, 0x3300_0000, 0x3300_0001, 0x32FF_FFFF, 0x7F80_0000, 0x7FC0_0000, 0] {
        x.push(f32::from_bits(b));
        x.push(-f32::from_bits(b));
    }
    let want: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    kvchat::backend::cpu::ops::round_f16(&mut x);
    for (g, w) in x.iter().zip(&want) {
        assert!(if w.is_nan() { g.is_nan() } else { g.to_bits() == w.to_bits() }, "{g} vs {w} ({:#010x})", w.to_bits());
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn simd_quantization_equals_the_portable_quantization() {
    // Natively the AVX2 quantization, in the browser the simd128 one.
    use kvchat::backend::cpu::quant::QActivations;
    let mut rng = kvchat::sampler::Rng::new(21);
    let cols = 32 * 40;
    for t in [1, 2, 7] {
        let mut x: Vec<f32> = (0..t * cols).map(|_| (rng.next_f64() as f32 - 0.5) * 6.0).collect();
        // Values that scale exactly onto halves, a zero block, embedding-like values, tiny values.
        for (i, v) in x[..64].iter_mut().enumerate() {
            *v = (i as f32 - 31.5) * 0.25;
        }
        x[64..96].fill(0.0);
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = ((i * 37 % 255) as f32 - 127.0) * 0.0078125;
        }
        for (i, v) in x[128..160].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-30;
        }
        let (mut a, mut b) = (QActivations::default(), QActivations::default());
        a.quantize(&x, t, cols);
        b.quantize_portable(&x, t, cols);
        let (qa, da, sa, xa) = a.quantized();
        let (qb, db, sb, xb) = b.quantized();
        assert_eq!(qa, qb, "t={t}: bytes");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(da), bits(sa), bits(xa)), (bits(db), bits(sb), bits(xb)), "t={t}: scales");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn simd_kernels_equal_the_portable_kernels_bit_for_bit() {
    use candle_core::quantized::QTensor;
    use kvchat::backend::cpu::quant::{Q4Layout, QActivations, QFormat, QMatrix};
    let mut rng = kvchat::sampler::Rng::new(9);
    // The second shape is large enough that prefill passes go over it in several row blocks.
    let every_format = QFormat::ALL.map(|f| (37, 256, f));
    let large = [(1001, 512, QFormat::Q4_1), (1001, 512, QFormat::Q8_0), (1001, 512, QFormat::Q4K), (1001, 512, QFormat::Q6K)];
    for (rows, cols, f) in every_format.into_iter().chain(large) {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let qt = QTensor::quantize(&candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap(), f.ggml()).unwrap();
        // This target's layout, and natively also the AVX2 kernel's where AVX-512 VNNI took over.
        let mut layouts = vec![Q4Layout::native_for(f)];
        if !cfg!(target_arch = "wasm32") && layouts[0] != Q4Layout::Ggml {
            layouts.push(Q4Layout::Ggml);
        }
        for layout in layouts {
            let m = QMatrix::from_blocks_with_layout(f, rows, cols, &qt.data().unwrap(), layout).unwrap();
            for t in 1..=11 {
                let x: Vec<f32> = (0..t * cols).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect();
                let (mut a, mut b) = (vec![0f32; t * rows], vec![0f32; t * rows]);
                m.matmul(&x, t, &mut QActivations::default(), &mut a);
                m.matmul_portable(&x, t, &mut QActivations::default(), &mut b);
                // The same float operations in the same order (native AVX2 and AVX-512,
                // wasm lanes and Rows4, portable): bit-identical results.
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{f:?} {layout:?} t={t} [{i}]: {p} vs {q}");
                }
            }
        }
    }
    // At the limits: nearly every weight at its format's largest code and every activation
    // at +127 or -127 (the relaxed-SIMD kernel sums a block's dots in i16: its bound must hold there).
    for f in QFormat::ALL {
        let (rows, cols) = (8, 256);
        let w: Vec<f32> = (0..rows * cols).map(|i| if i % 32 == 0 { -1.0 } else { 0.9375 }).collect();
        let qt = QTensor::quantize(&candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap(), f.ggml()).unwrap();
        let m = QMatrix::from_blocks_with_layout(f, rows, cols, &qt.data().unwrap(), Q4Layout::native_for(f)).unwrap();
        for (value, t) in [(2.0f32, 1), (-2.0, 1), (2.0, 5), (-2.0, 5)] {
            let x = vec![value; t * cols];
            let (mut a, mut b) = (vec![0f32; t * rows], vec![0f32; t * rows]);
            m.matmul(&x, t, &mut QActivations::default(), &mut a);
            m.matmul_portable(&x, t, &mut QActivations::default(), &mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert_eq!(p.to_bits(), q.to_bits(), "{f:?} at the limits, x={value} t={t} [{i}]: {p} vs {q}");
            }
        }
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn q4_layouts_and_kernels_agree_with_the_dequantized_product() {
    use candle_core::quantized::QTensor;
    use kvchat::backend::cpu::quant::{Q4Layout, QActivations, QFormat, QMatrix};
    let mut rng = kvchat::sampler::Rng::new(11);
    for f in QFormat::ALL {
        // Whole super-blocks for the K-quants.
        let (rows, cols) = (13, if f.block_values() == 256 { 512 } else { 96 });
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let qt = QTensor::quantize(&candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap(), f.ggml()).unwrap();
        let deq = qt.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let data = qt.data().unwrap();
        let ggml = QMatrix::from_blocks_with_layout(f, rows, cols, &data, Q4Layout::Ggml).unwrap();
        let lanes = QMatrix::from_blocks_with_layout(f, rows, cols, &data, Q4Layout::Lanes).unwrap();
        let rows4 = QMatrix::from_blocks_with_layout(f, rows, cols, &data, Q4Layout::Rows4).unwrap();
        // The AVX-512 layout holds the formats its kernels read; the others take the AVX2 one there.
        let rows16 = QMatrix::from_blocks_with_layout(f, rows, cols, &data, Q4Layout::Rows16).unwrap_or_else(|| {
            assert!(![QFormat::Q4_0, QFormat::Q4_1, QFormat::Q8_0].contains(&f), "{f:?} refused by Rows16");
            ggml.clone()
        });
        // Every layout dequantizes to candle's values (ggml's dequantization): the
        // K-quants' scales are exact products, so only the order of `q · d · s`
        // against ggml's `(d · s) · q` can move a last bit.
        let mut row = vec![0f32; cols];
        for m in [&ggml, &lanes, &rows4, &rows16] {
            for r in 0..rows {
                m.dequantize_row(r, &mut row);
                for (c, (a, b)) in row.iter().zip(&deq[r * cols..(r + 1) * cols]).enumerate() {
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{f:?} {:?} row {r} col {c}: {a} vs {b}", m.layout);
                    if [QFormat::Q4_0, QFormat::Q4_1, QFormat::Q8_0].contains(&f) {
                        assert_eq!(a.to_bits(), b.to_bits(), "{f:?} {:?} row {r} col {c}", m.layout);
                    }
                }
            }
        }
        // Every kernel (this target's SIMD one and the portable one, both layouts)
        // is the product of the dequantized weights with the Q8 activations
        // (f64 sum), up to float rounding.
        for t in [1, 3, 5] {
            let x: Vec<f32> = (0..t * cols).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect();
            let mut act = QActivations::default();
            act.quantize_portable(&x, t, cols);
            let (q8, d8, _, _) = act.quantized();
            let xq: Vec<f64> = q8.iter().enumerate().map(|(i, &q)| q as f64 * d8[i / 32] as f64).collect();
            let mut outs = Vec::new();
            for m in [&ggml, &lanes, &rows4, &rows16] {
                let (mut a, mut b) = (vec![0f32; t * rows], vec![0f32; t * rows]);
                m.matmul(&x, t, &mut QActivations::default(), &mut a);
                m.matmul_portable(&x, t, &mut QActivations::default(), &mut b);
                outs.push(a);
                outs.push(b);
            }
            // Lanes and Rows4 kernels do the same float operations in the same order
            // (except on the last, partial group of rows, which Lanes computes with the
            // portable kernel), where both have one: relaxed-SIMD wasm builds, and natively
            // where both take the portable kernel (plain simd128 has no Rows4 kernel).
            let full = rows / 4 * 4;
            let both_simd_or_both_portable = cfg!(target_feature = "relaxed-simd") || !cfg!(target_arch = "wasm32");
            for j in 0..t {
                let at = j * rows..j * rows + full;
                if both_simd_or_both_portable {
                    assert_eq!(outs[2][at.clone()], outs[4][at.clone()], "{f:?} t={t}: Lanes and Rows4 kernels differ");
                }
                assert_eq!(outs[3][at.clone()], outs[5][at], "{f:?} t={t}: Lanes and Rows4 portable kernels differ");
            }
            for j in 0..t {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| deq[r * cols + c] as f64 * xq[j * cols + c]);
                    let (exact, size) = terms.fold((0f64, 0f64), |(s, a), v| (s + v, a + v.abs()));
                    for o in &outs {
                        let v = o[j * rows + r];
                        // Q4_1's offset runs against Q8_1's f16-rounded sums, as in llama.cpp.
                        let tolerance = if f == QFormat::Q4_1 { 2e-3 } else { 1e-5 };
                        assert!((v as f64 - exact).abs() <= tolerance * size, "{f:?} t={t} [{j},{r}]: {v} vs {exact}");
                        assert!((v - outs[0][j * rows + r]).abs() <= 1e-4 * (1.0 + v.abs()), "{f:?}: kernels disagree");
                    }
                }
            }
        }
    }
}

/// The WebGPU backend in the browser (SwiftShader in headless Chromium; webdriver.json enables it).
#[cfg(target_arch = "wasm32")]
mod webgpu_browser {
    use super::*;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    #[wasm_bindgen(inline_js = "export async function fetch_bytes(url) { const r = await fetch(url); if (!r.ok) throw new Error(`HTTP ${r.status} for ${url}`); return new Uint8Array(await r.arrayBuffer()); }")]
    extern "C" {
        #[wasm_bindgen(catch)]
        async fn fetch_bytes(url: &str) -> Result<JsValue, JsValue>;
    }

    #[wasm_bindgen(inline_js = "export function next_task() { return new Promise((r) => setTimeout(r, 0)); }")]
    extern "C" {
        async fn next_task() -> JsValue;
    }

    /// Runs a generation step by step as the worker does, yielding to the event
    /// loop while the GPU works (the buffer's map callback runs from it).
    async fn run(e: &mut Engine, prompt: &[u32], n: usize, lose_after: Option<usize>) -> kvchat::Generation {
        let opts = GenerateOptions { max_tokens: n, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
        let mut s = e.start(Prompt::Ids(prompt), &opts).unwrap();
        let mut steps = 0;
        loop {
            if Some(steps) == lose_after {
                e.lose_gpu_device();
            }
            steps += 1;
            match e.step(&mut s).unwrap() {
                kvchat::Step::Done(g) => return *g,
                kvchat::Step::Waiting => {
                    next_task().await;
                }
                _ => {}
            }
        }
    }

    /// Each WGSL kernel against this build's wasm CPU kernel, bit for bit (the
    /// relaxed-SIMD run of scripts/test-wasm.sh repeats it with the Rows4 kernels).
    #[wasm_bindgen_test]
    async fn webgpu_kernels_equal_the_wasm_cpu_kernels() {
        use kvchat::backend::cpu::{ops, quant::{QActivations, QFormat, QMatrix}};
        use kvchat::backend::webgpu::{probe, GpuMatrix};
        let ctx = match kvchat::backend::webgpu::GpuContext::new().await {
            Ok(c) => c,
            Err(e) => panic!("no WebGPU adapter in this Chromium (webdriver.json passes --enable-unsafe-webgpu): {e}"),
        };
        let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        let mut report = Vec::new();
        let x: Vec<f32> = (0..100_000).map(|i| -100.0 + i as f32 * 0.0019).collect();
        let y = probe::exp(&ctx, &x).await.unwrap();
        let want: Vec<f32> = x.iter().map(|&v| ops::exp(v)).collect();
        report.push(("exp", bits(&y, &want), y.len()));
        let x = kvchat::testing::f16_cases();
        let y = probe::f16_round(&ctx, &x).await.unwrap();
        let want: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        report.push(("f16 rounding", bits(&y, &want), y.len()));
        let mut rng = kvchat::sampler::Rng::new(5);
        let mut r = |s: f32| (rng.next_f64() as f32 - 0.5) * s;
        // The formats ggml quantizes from floats (Q5_0 and the K-quants), at widths of whole super-blocks.
        for format in [QFormat::Q5_0, QFormat::Q4K, QFormat::Q5K, QFormat::Q6K] {
            let (rows, cols, t) = (70, 512, 3);
            let w: Vec<f32> = (0..rows * cols).map(|_| r(0.1)).collect();
            let qt = candle_core::quantized::QTensor::quantize(&candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap(), format.ggml()).unwrap();
            let blocks = qt.data().unwrap();
            let cpu = QMatrix::from_blocks(format, rows, cols, &blocks).unwrap();
            let m = GpuMatrix::from_blocks(&ctx, "w", format, rows, cols, &blocks).unwrap();
            let xs: Vec<f32> = (0..t * cols).map(|_| r(4.0)).collect();
            let (mut act, mut want) = (QActivations::default(), vec![0f32; t * rows]);
            cpu.matmul(&xs, t, &mut act, &mut want);
            let (got, _, _) = probe::matmul(&ctx, &m, &xs, t, probe::Input::Plain).await.unwrap();
            let name = match format { QFormat::Q5_0 => "matmul Q5_0", QFormat::Q4K => "matmul Q4_K", QFormat::Q5K => "matmul Q5_K", _ => "matmul Q6_K" };
            report.push((name, bits(&got, &want), got.len()));
            if format == QFormat::Q4K {
                // GELU(gate) * up before the product (gemma 3's FFN).
                let gu: Vec<f32> = (0..t * 2 * cols).map(|i| r(8.0) * 10f32.powi((i / (2 * cols)) as i32 % 3 - 1)).collect();
                let mut g = Vec::new();
                for j in 0..t {
                    let mut gate = gu[j * 2 * cols..j * 2 * cols + cols].to_vec();
                    ops::gelu_mul(&mut gate, &gu[j * 2 * cols + cols..(j + 1) * 2 * cols]);
                    g.extend(gate);
                }
                cpu.matmul(&g, t, &mut act, &mut want);
                let (got, _, _) = probe::matmul(&ctx, &m, &gu, t, probe::Input::Gelu).await.unwrap();
                report.push(("gelu + matmul", bits(&got, &want), got.len()));
            }
        }
        // Biases, QK-norm and NeoX pairs before the rotation, at Gemma 3's head size.
        {
            use kvchat::backend::webgpu::ops::RopeVariant;
            let (n_head, n_kv, hd) = (4, 1, 256);
            let rope = kvchat::model::rope::Rope::new(hd, 10_000.0);
            let (mut cos, mut sin) = (vec![0f32; hd / 2], vec![0f32; hd / 2]);
            rope.angles(777, &mut cos, &mut sin);
            let n = (n_head + 2 * n_kv) * hd;
            let qkv: Vec<f32> = (0..n).map(|_| r(8.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| r(1.0)).collect();
            let norms: Vec<f32> = (0..2 * hd).map(|_| 1.0 + r(0.3)).collect();
            let variant = RopeVariant { bias: true, qk_norm: true, rope_halves: true };
            let input = probe::RopeInput { variant, bias: &bias, norms: &norms, eps: 1e-6 };
            let (gq, gk, _) = probe::rope(&ctx, n_head, n_kv, hd, &qkv, &cos, &sin, input).await.unwrap();
            let mut want = qkv.clone();
            ops::add_rows(&mut want, &bias);
            for (h, head) in want[..(n_head + n_kv) * hd].chunks_exact_mut(hd).enumerate() {
                ops::rms_norm_in_place(head, &norms[if h < n_head { 0 } else { hd }..][..hd], 1e-6);
                ops::rope_halves(head, &cos, &sin);
            }
            report.push(("rope with biases, QK-norm, NeoX pairs", bits(&gq, &want[..n_head * hd]) + bits(&gk, &want[n_head * hd..(n_head + n_kv) * hd]), (n_head + n_kv) * hd));
        }
        for (format, rows, cols, t) in [(QFormat::Q4_1, 96, 576, 1), (QFormat::Q4_1, 64, 1536, 5), (QFormat::Q8_0, 96, 576, 2), (QFormat::Q4_0, 64, 576, 4)] {
            let blocks = kvchat::testing::random_q_blocks(format, rows * cols / 32, rows as u64);
            let cpu = QMatrix::from_blocks(format, rows, cols, &blocks).unwrap();
            let m = GpuMatrix::from_blocks(&ctx, "w", format, rows, cols, &blocks).unwrap();
            let xs: Vec<f32> = (0..t * cols).map(|_| r(4.0)).collect();
            let (mut act, mut want) = (QActivations::default(), vec![0f32; t * rows]);
            cpu.matmul(&xs, t, &mut act, &mut want);
            let (got, _, _) = probe::matmul(&ctx, &m, &xs, t, probe::Input::Plain).await.unwrap();
            report.push((["matmul Q4_0", "matmul Q4_1", "matmul Q8_0"][format as usize], bits(&got, &want), got.len()));
            if format == QFormat::Q8_0 {
                // Activations that are Q8 values times an f16 scale (token embeddings are):
                // v / d lands exactly on .5 often, so every rounding step must match.
                let emb = QMatrix::from_blocks(QFormat::Q8_0, 64, cols, &kvchat::testing::random_q_blocks(QFormat::Q8_0, 64 * cols / 32, 77)).unwrap();
                let mut xs = vec![0f32; 64 * cols];
                for (j, row) in xs.chunks_exact_mut(cols).enumerate() {
                    emb.dequantize_row(j, row);
                }
                let mut want = vec![0f32; 64 * rows];
                cpu.matmul(&xs, 64, &mut act, &mut want);
                let (got, _, _) = probe::matmul(&ctx, &m, &xs, 64, probe::Input::Plain).await.unwrap();
                report.push(("matmul of dequantized rows", bits(&got, &want), got.len()));
            }
            if format == QFormat::Q4_1 && t == 1 {
                // Many rows, magnitudes from 1e-3 to 1e3 (hidden states have outliers).
                let n = 256;
                let w: Vec<f32> = (0..cols).map(|_| r(2.0)).collect();
                let xs: Vec<f32> = (0..n * cols).map(|i| r(4.0) * 10f32.powi((i / cols) as i32 % 7 - 3)).collect();
                let mut h = vec![0f32; n * cols];
                for j in 0..n {
                    ops::rms_norm(&xs[j * cols..(j + 1) * cols], &w, 1e-5, &mut h[j * cols..(j + 1) * cols]);
                }
                let mut want = vec![0f32; n * rows];
                cpu.matmul(&h, n, &mut act, &mut want);
                let (got, _, _) = probe::matmul(&ctx, &m, &xs, n, probe::Input::Norm(&w, 1e-5)).await.unwrap();
                report.push(("rms_norm + matmul", bits(&got, &want), got.len()));
                let gu: Vec<f32> = (0..n * 2 * cols).map(|i| r(8.0) * 10f32.powi((i / (2 * cols)) as i32 % 4 - 1)).collect();
                let mut g = Vec::new();
                for j in 0..n {
                    let mut gate = gu[j * 2 * cols..j * 2 * cols + cols].to_vec();
                    ops::silu_mul(&mut gate, &gu[j * 2 * cols + cols..(j + 1) * 2 * cols]);
                    g.extend(gate);
                }
                cpu.matmul(&g, n, &mut act, &mut want);
                let (got, _, _) = probe::matmul(&ctx, &m, &gu, n, probe::Input::Silu).await.unwrap();
                report.push(("silu + matmul", bits(&got, &want), got.len()));
            }
        }
        let (n_head, n_kv, hd, cap) = (9, 3, 64, 128);
        let rope = kvchat::model::rope::Rope::new(hd, 100_000.0);
        for pos in [0usize, 1, 5, 13, 77, 1000, 123_456] {
            let qkv: Vec<f32> = (0..(n_head + 2 * n_kv) * hd).map(|_| r(8.0)).collect();
            let (mut cos, mut sin) = (vec![0f32; hd / 2], vec![0f32; hd / 2]);
            rope.angles(pos, &mut cos, &mut sin);
            let (gq, gk, _) = probe::rope(&ctx, n_head, n_kv, hd, &qkv, &cos, &sin, probe::RopeInput::default()).await.unwrap();
            let mut want = qkv[..(n_head + n_kv) * hd].to_vec();
            for head in want.chunks_exact_mut(hd) {
                ops::rope(head, &cos, &sin);
            }
            let d = bits(&gq, &want[..n_head * hd]) + bits(&gk, &want[n_head * hd..]);
            if d > 0 { web_sys::console::log_1(&format!("rope at {pos}: {d} differ").into()); }
            report.push(("rope", d, want.len()));
        }
        for used in (1..=40).chain([61]) {
            let c = kvchat::testing::attention_case(n_head, n_kv, hd, cap, used, used as u64);
            let got = probe::attention(&ctx, n_head, n_kv, hd, cap, used, &c.q, &c.k, &c.v).await.unwrap();
            let want = c.out;
            let d = bits(&got, &want);
            if d > 0 { web_sys::console::log_1(&format!("attention over {used} keys: {d} differ").into()); }
            report.push(("attention", d, got.len()));
        }
        for (what, differ, n) in &report {
            web_sys::console::log_1(&format!("{what}: {differ} of {n} results differ from the wasm CPU's").into());
        }
        assert!(report.iter().all(|r| r.1 == 0), "{report:?}");
    }

    /// Gemma 3 270M's own weights through the wasm CPU kernels and the WGSL
    /// kernels (which equal the native CPU's bits: tests/webgpu.rs), matrix by
    /// matrix, then its attention shape (four query heads on one kv head of
    /// 256) and the prompt's logits through both engines.
    #[wasm_bindgen_test]
    async fn gemma3_weights_on_the_wasm_cpu_equal_the_gpu() {
        use kvchat::backend::cpu::quant::{QActivations, QFormat, QMatrix};
        use kvchat::backend::webgpu::{probe, GpuMatrix};
        let Some(url) = crate::model_url() else { return };
        let url = format!("{}/gemma-3-270m-q4_k_m.gguf", &url[..url.rfind('/').unwrap()]);
        let ctx = kvchat::backend::webgpu::GpuContext::new().await.expect("a WebGPU adapter");
        let bytes: js_sys::Uint8Array = fetch_bytes(&url).await.expect("make models fetched Gemma 3").unchecked_into();
        let bytes = bytes.to_vec();
        let g = kvchat::gguf::Gguf::parse(&bytes).unwrap();
        let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        let mut rng = kvchat::sampler::Rng::new(3);
        let mut report = Vec::new();
        for name in ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.5.ffn_down.weight", "token_embd.weight"] {
            let dims = g.tensor_dims(name).unwrap();
            let (data, dt) = g.tensor_data(name, &dims).unwrap();
            let format = QFormat::of(dt).unwrap();
            let (rows, cols) = (dims[0], dims[1]);
            let cpu = QMatrix::from_blocks(format, rows, cols, &data).unwrap();
            let m = GpuMatrix::from_blocks(&ctx, name, format, rows, cols, &data).unwrap();
            for t in [1, 7] {
                let xs: Vec<f32> = (0..t * cols).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect();
                let (mut act, mut want) = (QActivations::default(), vec![0f32; t * rows]);
                cpu.matmul(&xs, t, &mut act, &mut want);
                let (got, _, _) = probe::matmul(&ctx, &m, &xs, t, probe::Input::Plain).await.unwrap();
                report.push((format!("{name} ({format:?}) t={t}"), bits(&got, &want), got.len()));
            }
        }
        for used in [1, 7, 8, 9, 33] {
            let c = kvchat::testing::attention_case(4, 1, 256, 64, used, used as u64);
            let got = probe::attention(&ctx, 4, 1, 256, 64, used, &c.q, &c.k, &c.v).await.unwrap();
            report.push((format!("attention 4 heads on 1 of 256, {used} keys"), bits(&got, &c.out), got.len()));
        }
        drop(g);
        let prompt = [2u32, 818, 4083, 529, 506, 10995, 23436];
        let opts = EngineOptions { kv: KvCacheConfig { window: 256, sinks: 4, dtype: KvDType::F32, cold: None }, ..Default::default() };
        let mut cpu = Engine::load(&bytes, opts.clone()).unwrap();
        let want = run(&mut cpu, &prompt, 12, None).await.generated_ids;
        drop(cpu);
        let mut gpu = Engine::load_gpu(bytes, opts, &ctx).unwrap();
        let got = run(&mut gpu, &prompt, 12, None).await.generated_ids;
        // llama.cpp's greedy tokens (tests/fixtures/gemma3-llamacpp.json, g1), which the native pass keeps.
        let gold = [563u32, 496, 27858, 886, 236761, 1030, 691, 496, 990, 529, 1822, 10534];
        web_sys::console::log_1(&format!("greedy: wasm CPU {want:?}, GPU {got:?}, llama.cpp {gold:?}").into());
        report.push(("greedy tokens, wasm CPU vs GPU".into(), want.iter().zip(&got).filter(|(a, b)| a != b).count(), 12));
        report.push(("greedy tokens, wasm CPU vs llama.cpp".into(), want.iter().zip(&gold).filter(|(a, b)| a != b).count(), 12));
        for (what, differ, n) in &report {
            web_sys::console::log_1(&format!("{what}: {differ} of {n} differ between the wasm CPU and the GPU").into());
        }
        assert!(report.iter().all(|r| r.1 == 0), "{:?}", report.iter().filter(|r| r.1 > 0).collect::<Vec<_>>());
    }

    #[wasm_bindgen_test]
    async fn webgpu_greedy_equals_the_cpu_in_the_browser() {
        let Some(url) = crate::model_url() else { return };
        let ctx = match kvchat::backend::webgpu::GpuContext::new().await {
            Ok(c) => c,
            Err(e) => panic!("no WebGPU adapter in this Chromium (webdriver.json passes --enable-unsafe-webgpu): {e}"),
        };
        web_sys::console::log_1(&format!("WebGPU adapter: {:?}", ctx.info).into());
        let bytes: js_sys::Uint8Array = fetch_bytes(url).await.expect("the model server answers").unchecked_into();
        let bytes = bytes.to_vec();
        let golden: Vec<serde_json::Value> = serde_json::from_str(include_str!("fixtures/golden-llamacpp.json")).unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
        // The wasm CPU kernels and the WGSL kernels do the same float operations in
        // the same order: greedy output is equal, not merely close.
        let mut engines = None;
        for dtype in [KvDType::F32, KvDType::F16] {
            drop(engines.take()); // the previous pair goes before the next loads
            let opts = EngineOptions { kv: KvCacheConfig { window: 256, sinks: 4, dtype, cold: None }, ..Default::default() };
            let mut cpu = Engine::load(&bytes, opts.clone()).unwrap();
            let t0 = web_time::Instant::now();
            let mut gpu = Engine::load_gpu(bytes.clone(), opts, &ctx).unwrap();
            web_sys::console::log_1(&format!("GPU load (pipelines, uploads) {:.0} ms", t0.elapsed().as_secs_f64() * 1e3).into());
            // SwiftShader runs about one token a second: every prompt with the f32
            // cache, three with the f16 one (about three minutes in all).
            let n = if dtype == KvDType::F32 { golden.len() } else { 3 };
            for p in &golden[..n] {
                let prompt = ids(&p["prompt_ids"]);
                let want = run(&mut cpu, &prompt, 12, None).await;
                let got = run(&mut gpu, &prompt, 12, None).await;
                let same = want.generated_ids.iter().zip(&got.generated_ids).take_while(|(a, b)| a == b).count();
                let (d, rb) = gpu.gpu_step_costs().unwrap();
                web_sys::console::log_1(
                    &format!(
                        "{dtype:?} prompt {}: {same}/12 greedy tokens equal; SwiftShader prefill {:.1} tok/s, decode {:.2} tok/s, {d} dispatches and {rb} bytes read back per decode step",
                        p["id"], got.stats.prefill_tokens_per_sec, got.stats.decode_tokens_per_sec
                    )
                    .into(),
                );
                assert_eq!(got.generated_ids, want.generated_ids, "{dtype:?} prompt {}: the GPU parts from the CPU at step {same}", p["id"]);
            }
            engines = Some((cpu, gpu));
        }
        drop(bytes);
        let (mut cpu, mut gpu) = engines.unwrap();
        // device.destroy() mid-generation: the engine moves to the CPU and continues.
        let prompt = ids(&golden[0]["prompt_ids"]);
        let want = run(&mut cpu, &prompt, 12, None).await;
        gpu.reset();
        let got = run(&mut gpu, &prompt, 12, Some(5)).await;
        assert_eq!(gpu.backend(), "cpu");
        web_sys::console::log_1(&format!("after device.destroy(): {}", gpu.fallback_reason().unwrap_or("?")).into());
        assert_eq!(got.generated_ids, want.generated_ids, "the conversation continues on the CPU with the same tokens");
    }
}
