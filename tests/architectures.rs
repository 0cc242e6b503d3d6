//! The block variants of the architectures kvchat runs, checked on tiny
//! random models against the formulas written out here in f64 (no file of a
//! real model needed): qwen3 (QK-norm, no biases, NeoX RoPE; no real file of
//! one is at hand) and gemma3 (QK-norm, post-norms, GELU, scaled embeddings,
//! sliding-window layers beside global ones with their own RoPE base), fed
//! past the sliding window so the local layers' rings wrap.

mod common;
use candle_core::Device;
use kvchat::testing::{TinyGguf, N_EMBD, N_HEAD, N_HEAD_KV};
use kvchat::{Engine, EngineOptions, KvCacheConfig, KvDType};

/// What the reference computes per layer.
#[derive(Clone, Copy)]
struct Layer {
    qk_norm: bool,
    post_norms: bool,
    gelu: bool,
    rope_base: f64,
    /// Keys within this many positions of the query (global: all).
    window: Option<usize>,
}

fn vector(t: &TinyGguf, name: &str) -> Vec<f64> {
    let (_, q) = t.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}"));
    q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let s = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * s * g).collect()
}

/// `W x` for `W` of `rows` rows stored row-major.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

/// NeoX RoPE: value `i` rotates with `i + hd/2`.
fn rope_halves(head: &mut [f64], pos: usize, base: f64) {
    let half = head.len() / 2;
    for i in 0..half {
        let a = pos as f64 * base.powf(-(2.0 * i as f64) / head.len() as f64);
        let (x, y) = (head[i], head[i + half]);
        head[i] = x * a.cos() - y * a.sin();
        head[i + half] = x * a.sin() + y * a.cos();
    }
}

/// The logits after every token of `ids`, from the formulas.
fn reference(t: &TinyGguf, layers: &[Layer], embed_scale: f64, eps: f64, ids: &[u32]) -> Vec<Vec<f64>> {
    let hd = N_EMBD / N_HEAD;
    let emb = vector(t, "token_embd.weight");
    let mut x: Vec<Vec<f64>> = ids.iter().map(|&id| emb[id as usize * N_EMBD..][..N_EMBD].iter().map(|v| v * embed_scale).collect()).collect();
    for (l, spec) in layers.iter().enumerate() {
        let w = |s: &str| vector(t, &format!("blk.{l}.{s}.weight"));
        let (wq, wk, wv, wo) = (w("attn_q"), w("attn_k"), w("attn_v"), w("attn_output"));
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (p, xp) in x.iter().enumerate() {
            let h = rms_norm(xp, &w("attn_norm"), eps);
            let (mut q, mut k) = (matvec(&wq, &h), matvec(&wk, &h));
            for (v, norm) in [(&mut q, "attn_q_norm"), (&mut k, "attn_k_norm")] {
                for head in v.chunks_exact_mut(hd) {
                    if spec.qk_norm {
                        head.copy_from_slice(&rms_norm(head, &w(norm), eps));
                    }
                    rope_halves(head, p, spec.rope_base);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, &h));
        }
        for p in 0..x.len() {
            let first = spec.window.map_or(0, |n| (p + 1).saturating_sub(n));
            let mut attn = vec![0.0; N_HEAD * hd];
            for head in 0..N_HEAD {
                let g = head / (N_HEAD / N_HEAD_KV);
                let q = &qs[p][head * hd..][..hd];
                let scores: Vec<f64> = (first..=p).map(|j| q.iter().zip(&ks[j][g * hd..][..hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()).collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, wgt) in (first..=p).zip(&e) {
                    for d in 0..hd {
                        attn[head * hd + d] += wgt / z * vs[j][g * hd + d];
                    }
                }
            }
            let mut o = matvec(&wo, &attn);
            if spec.post_norms {
                o = rms_norm(&o, &w("post_attention_norm"), eps);
            }
            x[p].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(&x[p], &w("ffn_norm"), eps);
            let (gate, up) = (matvec(&w("ffn_gate"), &h), matvec(&w("ffn_up"), &h));
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| u * if spec.gelu { 0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) } else { g / (1.0 + (-g).exp()) })
                .collect();
            let mut down = matvec(&w("ffn_down"), &act);
            if spec.post_norms {
                down = rms_norm(&down, &w("post_ffw_norm"), eps);
            }
            x[p].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    x.iter().map(|xp| matvec(&emb, &rms_norm(xp, &vector(t, "output_norm.weight"), eps))).collect()
}

/// Our logits after every token against the reference, relative to the logits' size.
fn assert_matches_reference(t: &TinyGguf, layers: &[Layer], embed_scale: f64, label: &str) {
    let opts = EngineOptions { kv: KvCacheConfig { window: 64, sinks: 4, dtype: KvDType::F32, cold: None }, prefill_chunk: 5, ..Default::default() };
    let mut e = Engine::load(&t.to_bytes(), opts).unwrap_or_else(|err| panic!("{label}: {err}"));
    let ids = common::ids(30, 3, e.config().vocab_size);
    let ours = e.logits_all(&ids).unwrap();
    let want = reference(t, layers, embed_scale, 1e-5, &ids);
    for (p, (a, b)) in ours.iter().zip(&want).enumerate() {
        let size = b.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let worst = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4 * size.max(1.0), "{label}: position {p}: logits differ by {worst} (size {size})");
    }
}

#[test]
fn qwen3_blocks_compute_the_formulas() {
    let t = TinyGguf::qwen3(5);
    let layer = Layer { qk_norm: true, post_norms: false, gelu: false, rope_base: 10_000.0, window: None };
    let e = Engine::load(&t.to_bytes(), EngineOptions::default()).unwrap();
    assert_eq!(e.config().arch, kvchat::model::config::Architecture::Qwen3);
    assert_matches_reference(&t, &[layer; 2], 1.0, "qwen3");
}

#[test]
fn gemma3_blocks_compute_the_formulas_past_the_sliding_window() {
    // Six layers (five sliding of 8 positions, the sixth global: llama.cpp's pattern),
    // 30 tokens: the sliding layers' rings wrap three times.
    let t = TinyGguf::gemma3(6, 8);
    let local = Layer { qk_norm: true, post_norms: true, gelu: true, rope_base: 10_000.0, window: Some(8) };
    let global = Layer { rope_base: 1e6, window: None, ..local };
    let layers = [local, local, local, local, local, global];
    assert_matches_reference(&t, &layers, (N_EMBD as f64).sqrt(), "gemma3");
    // The cache: five rings of 8 slots beside one layer of the configured window.
    let e = Engine::load(&t.to_bytes(), EngineOptions { kv: KvCacheConfig { window: 64, sinks: 4, dtype: KvDType::F32, cold: None }, ..Default::default() }).unwrap();
    let kv = e.kv_stats();
    let slot = 2 * N_HEAD_KV * (N_EMBD / N_HEAD) * 4;
    assert_eq!((kv.local_window, kv.local_bytes, kv.global_bytes), (8, 5 * 8 * slot, 64 * slot));
}
