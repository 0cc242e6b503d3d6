//! Rows of a matmul split across threads give exactly the one-thread result
//! (each row is computed by the same kernel, whoever runs it). Its own test
//! binary: the thread count is process-wide.

mod common;
use common::*;
use kvchat::backend::cpu::{quant::QActivations, quant::QFormat, quant::QMatrix, set_threads};
use kvchat::{Engine, EngineOptions, GenerateOptions, Prompt, SamplerConfig};

#[test]
fn split_rows_equal_one_thread_and_generation_is_unchanged() {
    use candle_core::quantized::QTensor;
    let mut rng = kvchat::sampler::Rng::new(5);
    for f in QFormat::ALL {
        for rows in [256, 258] {
            let cols = 256;
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let qt = QTensor::quantize(&candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap(), f.ggml()).unwrap();
            let m = QMatrix::from_blocks(f, rows, cols, &qt.data().unwrap()).unwrap();
            for t in [1, 5] {
                let x: Vec<f32> = (0..t * cols).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
                let mut one = vec![0f32; t * rows];
                set_threads(1);
                m.matmul(&x, t, &mut QActivations::default(), &mut one);
                for n in [2, 3] {
                    set_threads(n);
                    let mut many = vec![f32::NAN; t * rows];
                    m.matmul(&x, t, &mut QActivations::default(), &mut many);
                    assert_eq!(one, many, "{f:?} rows {rows} t {t} threads {n}");
                    // Several matrices in one pass (Q/K/V, gate/up): each one's rows as alone.
                    let (mut a, mut b) = (vec![f32::NAN; t * rows], vec![f32::NAN; t * rows]);
                    QMatrix::matmul_many([(&m, &mut a[..]), (&m, &mut b[..])], &x, t, &mut QActivations::default());
                    assert!(one == a && one == b, "{f:?} rows {rows} t {t} threads {n}: matmul_many");
                }
            }
        }
    }
    // A whole generation on the tiny model (every weight type) with two threads; the
    // 600-token prompt is long enough for attention to split its kv heads too.
    let bytes = kvchat::testing::tiny_llama_gguf(3);
    let run = |n: usize| {
        set_threads(n);
        let mut e = Engine::load(&bytes, EngineOptions::default()).unwrap();
        let opts = GenerateOptions { max_tokens: 40, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
        e.generate(Prompt::Ids(&ids(600, 1, e.config().vocab_size)), &opts, |_| true).unwrap().generated_ids
    };
    assert_eq!(run(1), run(2));
    set_threads(1);
}

/// Attention split across threads (kv heads) gives the one-thread logits bit
/// for bit, whatever the thread count: the tiny model (4 heads, 2 kv heads)
/// and, where it is present, SmolLM2 (9 heads, 3 kv heads). (Splitting a kv
/// head's query heads across threads as well, where the groups do not divide
/// among them, was measured and dropped: each part read the group's rows
/// again, and 2-thread decode at a full 2,048-token window fell from 116–124
/// to 75–82 tok/s natively and from 88.7 to 71.3 in Chromium.)
#[test]
fn attention_split_across_threads_gives_the_one_thread_bits() {
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let mut models = vec![("tiny", kvchat::testing::tiny_llama_gguf(3))];
    if let Some(real) = real_model() {
        models.push(("SmolLM2", real));
    }
    for (name, bytes) in models {
        let logits = |n: usize| {
            set_threads(n);
            let mut e = Engine::load(&bytes, EngineOptions::default()).unwrap();
            let prompt = ids(700, 2, e.config().vocab_size.min(4000));
            bits(e.logits(&prompt).unwrap())
        };
        let one = logits(1);
        for n in [2, 3, 4] {
            assert!(one == logits(n), "{name}: {n} threads");
        }
    }
    set_threads(1);
}
