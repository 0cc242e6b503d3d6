//! The bounded KV cache on the tiny random model: cached logits equal
//! recomputed ones, eviction keeps the sinks and the newest tokens, RoPE stays
//! consistent after eviction, prefix reuse and truncation, fixed memory.

mod common;
use common::*;
use kvchat::{Engine, GenerateOptions, Prompt, SamplerConfig};

const TOL: f32 = 1e-4;

#[test]
fn cached_logits_equal_uncached_before_the_window_fills() {
    let mut e = tiny(64, 4, 16);
    let vocab = e.config().vocab_size;
    let seq = ids(40, 1, vocab);
    // Incremental: one token at a time through the cache.
    let mut incremental = vec![e.logits(&seq[..1]).unwrap()];
    for t in &seq[1..] {
        incremental.push(e.append(&[*t]).unwrap());
    }
    // Uncached: every prefix recomputed from scratch.
    for i in 0..seq.len() {
        let fresh = e.logits(&seq[..=i]).unwrap();
        let d = max_abs_diff(&fresh, &incremental[i]);
        assert!(d < TOL, "position {i}: cached vs uncached logits differ by {d}");
    }
}

#[test]
fn chunked_prefill_equals_token_by_token_also_after_eviction() {
    // Window 16 with 4 sinks, 100 tokens: most of the sequence is evicted on the way.
    let vocab = tiny(16, 4, 1).config().vocab_size;
    let seq = ids(100, 2, vocab);
    let one = tiny(16, 4, 1).logits_all(&seq).unwrap();
    for chunk in [3, 7, 12, 64] {
        let many = tiny(16, 4, chunk).logits_all(&seq).unwrap();
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < TOL, "chunk {chunk}, position {i}: {d}");
        }
    }
    // Same without sinks.
    let one = tiny(16, 0, 1).logits_all(&seq).unwrap();
    let many = tiny(16, 0, 5).logits_all(&seq).unwrap();
    for (i, (a, b)) in one.iter().zip(&many).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d < TOL, "no sinks, position {i}: {d}");
    }
}

#[test]
fn rope_is_consistent_after_eviction() {
    // With one layer a token's key and value depend only on the token and its
    // position, so after eviction the streaming cache must give exactly the
    // logits of recomputing [sinks, kept tokens] at in-cache positions 0..window.
    let bytes = kvchat::testing::TinyGguf::new_f32(7).with_layers(1).to_bytes();
    let (window, sinks) = (12, 3);
    let mut e = Engine::load(&bytes, opts(window, sinks, 4)).unwrap();
    let vocab = e.config().vocab_size;
    let seq = ids(50, 3, vocab);
    let streamed = e.logits_all(&seq).unwrap();
    for n in window + 1..=seq.len() {
        // The cache after n tokens holds the sinks and the newest window - sinks tokens.
        let mut kept: Vec<u32> = seq[..sinks].to_vec();
        kept.extend_from_slice(&seq[n - (window - sinks)..n]);
        let fresh = e.logits(&kept).unwrap();
        let d = max_abs_diff(&fresh, &streamed[n - 1]);
        assert!(d < TOL, "after {n} tokens: {d}");
    }
    // And without sinks the same holds for the plain sliding window.
    let mut e = Engine::load(&bytes, opts(window, 0, 5)).unwrap();
    let streamed = e.logits_all(&seq).unwrap();
    for n in window + 1..=seq.len() {
        let fresh = e.logits(&seq[n - window..n]).unwrap();
        assert!(max_abs_diff(&fresh, &streamed[n - 1]) < TOL, "no sinks, after {n} tokens");
    }
}

#[test]
fn eviction_keeps_sinks_and_newest_tokens_and_memory_stays_fixed() {
    let (window, sinks) = (32, 4);
    let mut e = tiny(window, sinks, 8);
    let vocab = e.config().vocab_size;
    let bytes0 = e.kv_stats().bytes;
    let seq = ids(10 * window + 7, 4, vocab);
    let _ = e.append(&seq[..1]).unwrap();
    for t in &seq[1..] {
        let _ = e.append(&[*t]).unwrap();
        let kv = e.kv_stats();
        assert!(kv.used <= window);
        assert_eq!(kv.bytes, bytes0, "cache storage never grows");
    }
    let kv = e.kv_stats();
    assert_eq!(kv.capacity, window);
    assert_eq!(kv.used, window);
    assert_eq!(kv.sinks, sinks);
    assert_eq!(kv.evicted, seq.len() - window);
    // One layer, 2 kv heads x 16 dims, K and V, f32: per token 2*2*16*4*layers bytes.
    assert_eq!(bytes0, window * 2 * 2 * 16 * 4 * kvchat::testing::N_LAYER);
}

#[test]
fn memory_stays_flat_over_ten_windows_of_generation() {
    fn rss_kib() -> Option<usize> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }
    let mut e = tiny(64, 4, 16);
    let opts = GenerateOptions { max_tokens: 64, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let g = e.generate(Prompt::Raw("the cat"), &opts, |_| true).unwrap();
    let mut prompt_ids = g.prompt_ids.clone();
    prompt_ids.extend(&g.generated_ids);
    let before = rss_kib();
    let opts = GenerateOptions { max_tokens: 640, ..opts };
    let g = e.generate(Prompt::Ids(&prompt_ids), &opts, |_| true).unwrap();
    assert_eq!(g.generated_ids.len(), 640);
    assert_eq!(g.kv.used, 64);
    assert!(g.kv.evicted > 600);
    if let (Some(a), Some(b)) = (before, rss_kib()) {
        assert!(b < a + 8 * 1024, "RSS grew from {a} KiB to {b} KiB");
    }
}

#[test]
fn prefix_reuse_gives_the_same_logits_as_a_fresh_prefill() {
    let mut e = tiny(128, 4, 16);
    let vocab = e.config().vocab_size;
    let a = ids(30, 5, vocab);
    let mut ab = a.clone();
    ab.extend(ids(20, 6, vocab));
    let opts = GenerateOptions { max_tokens: 1, sampler: SamplerConfig::greedy(), ..Default::default() };
    e.generate(Prompt::Ids(&a), &opts, |_| true).unwrap();
    let g = e.generate(Prompt::Ids(&ab), &opts, |_| true).unwrap();
    assert_eq!(g.stats.reused_tokens, a.len(), "the next turn prefills only its new tokens");
    // Same logits as from scratch.
    let reused = e.cached_tokens().to_vec();
    assert_eq!(reused, ab);
    let fresh = tiny(128, 4, 16).logits(&ab).unwrap();
    e.reset();
    let again = e.logits(&ab).unwrap();
    assert!(max_abs_diff(&fresh, &again) < TOL);
}

#[test]
fn a_diverging_request_truncates_to_the_common_prefix() {
    let mut e = tiny(128, 4, 16);
    let vocab = e.config().vocab_size;
    let common = ids(25, 7, vocab);
    let mut x = common.clone();
    x.extend(ids(15, 8, vocab));
    let mut y = common.clone();
    y.extend(ids(10, 9, vocab));
    let opts = GenerateOptions { max_tokens: 4, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    e.generate(Prompt::Ids(&x), &opts, |_| true).unwrap();
    let g = e.generate(Prompt::Ids(&y), &opts, |_| true).unwrap();
    assert_eq!(g.stats.reused_tokens, common.len());
    let fresh = tiny(128, 4, 16).generate(Prompt::Ids(&y), &opts, |_| true).unwrap();
    assert_eq!(g.generated_ids, fresh.generated_ids, "an edited message answers as a fresh engine would");
}

#[test]
fn after_eviction_a_diverging_request_starts_from_scratch() {
    let mut e = tiny(16, 4, 8);
    let vocab = e.config().vocab_size;
    let long = ids(40, 10, vocab);
    let opts = GenerateOptions { max_tokens: 2, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    e.generate(Prompt::Ids(&long), &opts, |_| true).unwrap();
    assert!(e.kv_stats().evicted > 0);
    let mut other = long[..30].to_vec();
    other.push(long[30] ^ 1);
    let g = e.generate(Prompt::Ids(&other), &opts, |_| true).unwrap();
    assert_eq!(g.stats.reused_tokens, 0);
    let fresh = tiny(16, 4, 8).generate(Prompt::Ids(&other), &opts, |_| true).unwrap();
    assert_eq!(g.generated_ids, fresh.generated_ids);
    // Extending the history is still reused after eviction.
    let mut more = e.cached_tokens().to_vec();
    more.extend(ids(3, 11, vocab));
    let g = e.generate(Prompt::Ids(&more), &opts, |_| true).unwrap();
    assert_eq!(g.stats.reused_tokens, more.len() - 3);
}

#[test]
fn no_cache_mode_generates_the_same_tokens() {
    let opts = GenerateOptions { max_tokens: 24, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let a = tiny(256, 4, 16).generate(Prompt::Raw("the cat sat on"), &opts, |_| true).unwrap();
    let b = tiny(256, 4, 16)
        .generate(Prompt::Raw("the cat sat on"), &GenerateOptions { no_cache: true, ..opts }, |_| true)
        .unwrap();
    assert_eq!(a.generated_ids, b.generated_ids);
}

#[test]
fn f16_cache_stays_close_to_f32() {
    let vocab = tiny(64, 4, 8).config().vocab_size;
    let seq = ids(30, 12, vocab);
    let a = tiny(64, 4, 8).logits(&seq).unwrap();
    let mut o = opts(64, 4, 8);
    o.kv.dtype = kvchat::KvDType::F16;
    let mut e = Engine::load(&tiny_bytes(), o).unwrap();
    let b = e.logits(&seq).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.05, "f16 vs f32: {d}");
    assert_eq!(e.kv_stats().bytes * 2, tiny(64, 4, 8).kv_stats().bytes);
}

#[test]
fn window_from_a_byte_budget() {
    let mut o = opts(2048, 4, 8);
    // Per token: 2 layers x 2 (K,V) x 2 heads x 16 dims x 4 bytes = 512 bytes.
    o.kv_budget_bytes = Some(512 * 100 + 17);
    let e = Engine::load(&tiny_bytes(), o).unwrap();
    assert_eq!(e.kv_stats().capacity, 100);
    assert!(e.kv_stats().bytes <= 512 * 100 + 17);
}

/// An f16 cache's rows are converted to f32 for attention, and the tokens of a
/// chunk, attending one layer in turn, convert only the slot each writes (and
/// the rows it adds). The outputs equal, bit for bit, those of converting every
/// row each time: through the ring's wrap, a rewind, and two caches that share
/// one scratch (as a batch's rows do).
#[test]
fn f16_rows_converted_once_per_chunk_equal_a_full_conversion() {
    use kvchat::kv_cache::{AttnScratch, KvCache, KvCacheConfig, KvDType};
    let (n_head, n_kv, hd, layers) = (6, 2, 16, 2);
    let cfg = KvCacheConfig { window: 24, sinks: 4, dtype: KvDType::F16, cold: None };
    let mut rng = kvchat::sampler::Rng::new(5);
    let mut random = move |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 6.0).collect() };
    let new_cache = || KvCache::uniform(cfg, layers, n_kv, hd).unwrap();
    // [shared scratch, fresh scratch each time] for two caches given the same writes.
    let mut caches = [[new_cache(), new_cache()], [new_cache(), new_cache()]];
    let mut shared = AttnScratch::default();
    let positions: Vec<usize> = (0..60).chain(10..30).collect();
    for (c, chunk) in positions.chunks(7).enumerate() {
        for layer in 0..layers {
            for &p in chunk {
                // The second cache joins every other chunk, between the first one's tokens.
                for pair in caches.iter_mut().take(if c % 2 == 0 { 1 } else { 2 }) {
                    let (q, k, v) = (random(n_head * hd), random(n_kv * hd), random(n_kv * hd));
                    let (mut incremental, mut full) = (vec![0f32; n_head * hd], vec![0f32; n_head * hd]);
                    let plan = pair[0].plan(p);
                    pair[0].attend(layer, plan, &q, &[], &k, &v, None, &mut shared, &mut incremental);
                    pair[1].attend(layer, plan, &q, &[], &k, &v, None, &mut AttnScratch::default(), &mut full);
                    for (i, (a, b)) in incremental.iter().zip(&full).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "chunk {c}, layer {layer}, position {p}, output {i}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
