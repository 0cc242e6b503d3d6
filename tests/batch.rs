//! Batch generation: every sequence gets exactly the tokens it gets alone,
//! with continuous batching, a shared prefix, per-input options and bounded caches.

mod common;
use common::*;
use kvchat::{BatchEvent, BatchOptions, Engine, EngineOptions, Error, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig};
use serde_json::Value;

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() }
}

/// Runs a batch to the end; returns each input's generated ids and the concatenated pieces.
fn run_batch(e: &mut Engine, inputs: &[(Prompt, GenerateOptions)], opts: BatchOptions) -> (Vec<Vec<u32>>, Vec<String>, kvchat::BatchStats) {
    let mut b = e.start_batch(inputs, opts).unwrap();
    let mut ids = vec![Vec::new(); inputs.len()];
    let mut streamed = vec![String::new(); inputs.len()];
    let mut done = vec![false; inputs.len()];
    let mut steps = 0;
    while !b.is_done() {
        for ev in e.step_batch(&mut b).unwrap() {
            match ev {
                BatchEvent::Piece { index, piece } => streamed[index].push_str(&piece),
                BatchEvent::Done { index, generation } => {
                    assert!(!done[index], "input {index} finished twice");
                    done[index] = true;
                    streamed[index].push_str(&generation.final_piece);
                    assert_eq!(streamed[index], generation.text, "input {index}: the pieces add up to the text");
                    ids[index] = generation.generated_ids;
                }
            }
        }
        steps += 1;
        assert!(steps < 10_000);
    }
    assert!(done.iter().all(|&d| d));
    (ids, streamed, b.stats())
}

fn alone(e: &mut Engine, prompt: Prompt, o: &GenerateOptions) -> Vec<u32> {
    e.reset();
    e.generate(prompt, o, |_| true).unwrap().generated_ids
}

#[test]
fn continuous_batching_gives_each_sequence_its_own_tokens() {
    // Quantized tiny model: every weight type, the batched matmul kernels.
    let mut e = Engine::load(&kvchat::testing::tiny_llama_gguf(7), EngineOptions::default()).unwrap();
    let vocab = e.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..7).map(|i| ids(5 + 9 * i, 100 + i as u64, vocab)).collect();
    // Different lengths, so sequences leave at different steps and queued ones take their slots.
    let mut inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().enumerate().map(|(i, p)| (Prompt::Ids(p), greedy(3 + 7 * i))).collect();
    // One input samples with its own seed.
    inputs[2].1.sampler = SamplerConfig { temperature: 0.9, top_k: 20, seed: Some(77), ..SamplerConfig::greedy() };
    let (got, _, stats) = run_batch(&mut e, &inputs, BatchOptions { batch_size: 3, ..Default::default() });
    for (i, (p, o)) in inputs.iter().enumerate() {
        assert_eq!(got[i], alone(&mut e, *p, o), "input {i}");
    }
    assert_eq!(stats.sequences, 7);
    assert_eq!(stats.finished, 7);
    assert_eq!(stats.batch_size, 3);
    assert_eq!(stats.generated_tokens, got.iter().map(Vec::len).sum::<usize>());
}

#[test]
fn a_shared_prefix_is_prefilled_once_and_results_do_not_change() {
    let mut e = tiny(256, 4, 16);
    let vocab = e.config().vocab_size;
    let doc = ids(40, 9, vocab);
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| [doc.clone(), ids(3 + i, 50 + i as u64, vocab)].concat()).collect();
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), greedy(12))).collect();
    let (shared, _, stats) = run_batch(&mut e, &inputs, BatchOptions { batch_size: 2, ..Default::default() });
    assert_eq!(stats.shared_prefix_tokens, 40);
    let (plain, _, stats) = run_batch(&mut e, &inputs, BatchOptions { batch_size: 2, share_prefix: false, ..Default::default() });
    assert_eq!(stats.shared_prefix_tokens, 0);
    assert_eq!(shared, plain);
    for (i, (p, o)) in inputs.iter().enumerate() {
        assert_eq!(shared[i], alone(&mut e, *p, o), "input {i}");
    }
}

#[test]
fn each_cache_stays_bounded_and_evicts_like_a_single_sequence() {
    // Window 32 with 2 sinks, 60 generated tokens: every sequence evicts.
    let mut e = tiny(32, 2, 8);
    let vocab = e.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| ids(10 + i, 7 + i as u64, vocab)).collect();
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), greedy(60))).collect();
    let kv = KvCacheConfig { window: 32, sinks: 2, dtype: KvDType::F32, cold: None };
    let (got, _, stats) = run_batch(&mut e, &inputs, BatchOptions { batch_size: 3, kv: Some(kv), share_prefix: false });
    assert_eq!(stats.kv_bytes_per_sequence, kv.window * kv.bytes_per_token(e.config().n_layer, e.config().kv_dim()));
    for (i, (p, o)) in inputs.iter().enumerate() {
        assert_eq!(got[i], alone(&mut e, *p, o), "input {i}");
    }
}

#[test]
fn bad_batches_give_typed_errors_and_the_engine_stays_usable() {
    let mut e = tiny(64, 2, 8);
    let p = [5u32, 6, 7];
    assert!(matches!(e.start_batch(&[], BatchOptions::default()), Err(Error::InvalidPrompt(_))));
    let one = [(Prompt::Ids(&p), greedy(4))];
    assert!(matches!(e.start_batch(&one, BatchOptions { batch_size: 0, ..Default::default() }), Err(Error::InvalidOption(_))));
    let empty: [u32; 0] = [];
    let bad = [(Prompt::Ids(&p), greedy(4)), (Prompt::Ids(&empty), greedy(4))];
    let err = e.start_batch(&bad, BatchOptions::default()).unwrap_err();
    assert!(err.to_string().contains("input 1"), "{err}");
    // A batch that cannot fit the memory budget is refused before anything is allocated.
    let mut small = Engine::load(&tiny_bytes(), EngineOptions { memory_budget: 4 << 20, ..opts(64, 2, 8) }).unwrap();
    let many = [(Prompt::Ids(&p), greedy(4))];
    let huge = KvCacheConfig { window: 100_000, sinks: 4, dtype: KvDType::F32, cold: None };
    assert!(matches!(small.start_batch(&many, BatchOptions { kv: Some(huge), ..Default::default() }), Err(Error::Memory(_))));
    // Still usable.
    let (got, _, _) = run_batch(&mut e, &one, BatchOptions::default());
    assert_eq!(got[0].len(), 4);
}

#[test]
fn golden_prompts_as_one_batch_equal_their_single_greedy_runs() {
    let Some(bytes) = real_model() else { return };
    let kv = KvCacheConfig { window: 512, sinks: 4, dtype: KvDType::F16, cold: None };
    let mut e = Engine::load(&bytes, EngineOptions { kv, ..Default::default() }).unwrap();
    let golden: Vec<Value> = serde_json::from_str(include_str!("fixtures/golden-llamacpp.json")).unwrap();
    let prompts: Vec<Vec<u32>> = golden.iter().map(|p| p["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()).collect();
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), greedy(48))).collect();
    let t0 = std::time::Instant::now();
    let (got, _, stats) = run_batch(&mut e, &inputs, BatchOptions { batch_size: 8, kv: Some(kv), ..Default::default() });
    let batch_s = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    for (i, (p, o)) in inputs.iter().enumerate() {
        assert_eq!(got[i], alone(&mut e, *p, o), "golden prompt {}", golden[i]["id"]);
    }
    println!(
        "{} golden prompts × 48 greedy tokens: batch {batch_s:.2} s ({:.1} tok/s), one at a time {:.2} s; all ids equal",
        inputs.len(),
        stats.tokens_per_sec,
        t0.elapsed().as_secs_f64()
    );
}
