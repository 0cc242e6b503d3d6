//! The cold KV tier: tokens that leave the window are kept compressed and
//! recalled when a query needs them. A short pass-key case on the real model
//! (the long table is in `make bench`), and on the tiny model: nothing changes
//! before eviction, memory stays fixed however long the sequence, 4 bits work,
//! batches keep a cold tier per sequence.

mod common;
use common::*;
use kvchat::{BatchEvent, BatchOptions, ColdBits, ColdConfig, Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Prompt, SamplerConfig, TokenTier};

/// The pass-key prompt (Landmark Attention's format): an instruction, `fill`
/// repetitions of filler, the key stated after `before` of them, the question.
pub fn pass_key_prompt(fill: usize, before: usize, key: u32) -> String {
    let intro = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n";
    let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
    let fact = format!("The pass key is {key}. Remember it. {key} is the pass key. ");
    format!("{intro}{}{fact}{}\nWhat is the pass key? The pass key is", filler.repeat(before), filler.repeat(fill - before))
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampler: SamplerConfig { temperature: 0.0, ..Default::default() }, ..Default::default() }
}

fn kv(window: usize, cold: Option<ColdConfig>) -> KvCacheConfig {
    KvCacheConfig { window, sinks: 4, dtype: KvDType::F32, cold }
}

fn cold(capacity: usize, recall: usize, bits: ColdBits) -> Option<ColdConfig> {
    Some(ColdConfig { capacity, bits, recall })
}

#[test]
fn the_pass_key_comes_back_from_the_cold_tier() {
    let Some(bytes) = real_model() else { return };
    for key in [58213, 30917] {
        // About 680 tokens, the key in the first tenth; a 128-token window.
        let prompt = pass_key_prompt(25, 2, key);
        let answer = |cold: Option<ColdConfig>| {
            let mut e = Engine::load(&bytes, EngineOptions { kv: kv(128, cold), ..Default::default() }).unwrap();
            let out = e.generate(Prompt::Raw(&prompt), &greedy(6), |_| true).unwrap();
            assert!(out.stats.prompt_tokens > 600, "{} prompt tokens", out.stats.prompt_tokens);
            (out.text, out.kv)
        };
        let (plain, _) = answer(None);
        assert!(!plain.contains(&key.to_string()), "the plain window already answers {key}: {plain:?} (the case shows nothing)");
        let (text, stats) = answer(cold(1024, 128, ColdBits::Eight));
        assert!(text.contains(&key.to_string()), "key {key}: the cold tier answered {text:?}");
        let c = stats.cold.expect("cold stats");
        assert!(c.used >= 480 && c.recalled_tokens == 128 && c.loads > 0, "{c:?}");
    }
}

#[test]
fn the_memory_view_spells_the_history_with_each_token_s_tier() {
    let Some(bytes) = real_model() else { return };
    let prompt = pass_key_prompt(25, 2, 58213);
    let mut e = Engine::load(&bytes, EngineOptions { kv: kv(128, cold(1024, 128, ColdBits::Eight)), ..Default::default() }).unwrap();
    let out = e.generate(Prompt::Raw(&prompt), &greedy(6), |_| true).unwrap();
    let view = e.memory_view();
    let text: String = view.tokens.iter().map(|(piece, _)| piece.as_str()).collect();
    assert_eq!(view.tokens.len(), e.cached_tokens().len());
    assert_eq!(text, format!("{prompt}{}", e.detokenize(&e.cached_tokens()[out.stats.prompt_tokens..])));
    // Sinks, then the cold tier, its open block, the window: in that order, each where the stats say.
    let tiers: Vec<TokenTier> = view.tokens.iter().map(|(_, t)| *t).collect();
    let (kv, c) = (e.kv_stats(), e.kv_stats().cold.unwrap());
    let count = |t: TokenTier| tiers.iter().filter(|&&x| x == t).count();
    assert_eq!((count(TokenTier::Sink), count(TokenTier::Window), count(TokenTier::Cold)), (4, 124, c.used));
    assert_eq!(count(TokenTier::Pending), kv.evicted - c.used);
    assert!(tiers.windows(2).all(|w| w[0] as u8 <= w[1] as u8), "tiers out of order");
    // The last step's recalled blocks are whole cold blocks.
    assert!(!view.recalled.is_empty());
    for &(start, tokens, heads) in &view.recalled {
        assert!(tiers[start..start + tokens].iter().all(|&t| t == TokenTier::Cold) && heads > 0, "block at {start}");
    }
    let key_at = text.find("58213").unwrap();
    let mut at = 0;
    let key_token = view.tokens.iter().position(|(p, _)| { at += p.len(); at > key_at }).unwrap();
    let recalled_key = view.recalled.iter().any(|&(s, n, _)| (s..s + n).contains(&key_token));
    println!("the key at token {key_token} ({:?}); recalled at the last step: {recalled_key}; blocks {:?}", tiers[key_token], view.recalled);
    assert!(recalled_key, "the block holding the key was recalled for the answer's last token");
}

#[test]
fn before_eviction_the_cold_tier_changes_nothing() {
    let bytes = tiny_bytes();
    let ids = ids(40, 3, 64);
    let run = |cold: Option<ColdConfig>| {
        let mut e = Engine::load(&bytes, EngineOptions { kv: kv(64, cold), prefill_chunk: 7, ..Default::default() }).unwrap();
        e.generate(Prompt::Ids(&ids), &greedy(20), |_| true).unwrap().generated_ids
    };
    assert_eq!(run(None), run(cold(256, 32, ColdBits::Eight)));
}

#[test]
fn memory_stays_fixed_however_long_the_sequence() {
    let bytes = tiny_bytes();
    for bits in [ColdBits::Eight, ColdBits::Four] {
        let mut e = Engine::load(&bytes, EngineOptions { kv: kv(32, cold(128, 64, bits)), prefill_chunk: 16, ..Default::default() }).unwrap();
        let mut sizes = Vec::new();
        for round in 0..6 {
            let ids = ids(100, round, 64);
            e.append(&ids).unwrap();
            let s = e.kv_stats();
            let c = s.cold.unwrap();
            assert!(c.used <= c.capacity && c.capacity == 128, "{c:?}");
            sizes.push((s.bytes, c.bytes));
            if round >= 2 {
                assert!(c.evicted > 0 && c.used == 128, "round {round}: {c:?}");
            }
            // Past the cold tier's capacity the oldest tokens are dropped: the memory view says so.
            let tiers: Vec<TokenTier> = e.memory_view().tokens.into_iter().map(|(_, t)| t).collect();
            let count = |t: TokenTier| tiers.iter().filter(|&&x| x == t).count();
            assert_eq!((count(TokenTier::Sink), count(TokenTier::Dropped), count(TokenTier::Cold)), (4, c.evicted, c.used), "round {round}");
            assert_eq!(count(TokenTier::Window), 28);
        }
        assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{bits:?}: {sizes:?}");
    }
}

#[test]
fn a_recalling_cache_generates_and_recovers_from_a_new_prompt() {
    // Past the window and into the cold tier, then a different prompt (the
    // cache starts over: the recall slots must forget their blocks).
    let bytes = tiny_bytes();
    let mut e = Engine::load(&bytes, EngineOptions { kv: kv(32, cold(256, 64, ColdBits::Four)), prefill_chunk: 9, ..Default::default() }).unwrap();
    let first = e.generate(Prompt::Ids(&ids(200, 1, 64)), &greedy(30), |_| true).unwrap();
    assert!(e.kv_stats().cold.unwrap().recalled_tokens > 0);
    let again = |e: &mut Engine| e.generate(Prompt::Ids(&ids(150, 2, 64)), &greedy(30), |_| true).unwrap().generated_ids;
    let second = again(&mut e);
    let mut fresh = Engine::load(&bytes, EngineOptions { kv: kv(32, cold(256, 64, ColdBits::Four)), prefill_chunk: 9, ..Default::default() }).unwrap();
    assert_eq!(second, again(&mut fresh), "a reused engine equals a fresh one");
    assert_eq!(first.generated_ids.len(), 30);
}

#[test]
fn each_sequence_of_a_batch_has_its_own_tiers() {
    let bytes = tiny_bytes();
    let opts = EngineOptions { kv: kv(32, cold(256, 64, ColdBits::Eight)), prefill_chunk: 300, ..Default::default() };
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| ids(120 + 10 * i, 10 + i as u64, 64)).collect();
    let single: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| Engine::load(&bytes, opts.clone()).unwrap().generate(Prompt::Ids(p), &greedy(40), |_| true).unwrap().generated_ids)
        .collect();
    let mut e = Engine::load(&bytes, opts.clone()).unwrap();
    let inputs: Vec<(Prompt, GenerateOptions)> = prompts.iter().map(|p| (Prompt::Ids(p), greedy(40))).collect();
    let bo = BatchOptions { batch_size: 3, kv: Some(opts.kv), share_prefix: false };
    let mut b = e.start_batch(&inputs, bo).unwrap();
    let mut out = vec![Vec::new(); inputs.len()];
    while !b.is_done() {
        for ev in e.step_batch(&mut b).unwrap() {
            if let BatchEvent::Done { index, generation } = ev {
                out[index] = generation.generated_ids;
            }
        }
    }
    assert!(out.iter().all(|o| o.len() == 40));
    assert_eq!(out, single, "each sequence equals its single run");
}

#[test]
fn bad_cold_options_are_typed_errors() {
    let bytes = tiny_bytes();
    for c in [cold(8, 8, ColdBits::Eight), cold(64, 128, ColdBits::Eight), cold(1 << 30, 64, ColdBits::Four)] {
        let r = Engine::load(&bytes, EngineOptions { kv: kv(32, c), ..Default::default() });
        assert!(matches!(r, Err(kvchat::Error::InvalidOption(_))), "{c:?}");
    }
    assert!(ColdBits::from_bits(3).is_err());
}
