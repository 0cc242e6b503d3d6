//! Saved sessions (the cache's third tier): a cache written out and read back
//! continues exactly where it was, with no re-prefill; a corrupt, foreign or
//! mismatched file is a typed error and the engine stays usable.

mod common;
use common::*;
use kvchat::{ColdBits, ColdConfig, Engine, EngineOptions, Error, GenerateOptions, KvCacheConfig, KvDType, Message, Prompt, SamplerConfig};

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampler: SamplerConfig { temperature: 0.0, ..Default::default() }, ..Default::default() }
}

fn opts(window: usize, dtype: KvDType, cold: Option<ColdConfig>) -> EngineOptions {
    EngineOptions { kv: KvCacheConfig { window, sinks: 2, dtype, cold }, prefill_chunk: 9, ..Default::default() }
}

/// Feeds a long first request, saves, and checks that a fresh engine restored
/// from the bytes continues with the tokens of the engine that never stopped,
/// computing only the new tokens.
fn round_trip(o: EngineOptions) {
    let bytes = tiny_bytes();
    let first = ids(150, 5, 64);
    let mut second = first.clone();
    second.extend(ids(20, 6, 64));
    let mut kept = Engine::load(&bytes, o.clone()).unwrap();
    let g1 = kept.generate(Prompt::Ids(&first), &greedy(12), |_| true).unwrap();
    let image = kept.save_session().unwrap();
    let cached = kept.cached_tokens().to_vec();
    let mut follow = first.clone();
    follow.extend(&g1.generated_ids);
    follow.extend(&second[150..]);
    let want = kept.generate(Prompt::Ids(&follow), &greedy(16), |_| true).unwrap();

    let mut restored = Engine::load(&bytes, o.clone()).unwrap();
    restored.restore_session(&image).unwrap();
    assert_eq!(restored.cached_tokens(), &cached[..]);
    let got = restored.generate(Prompt::Ids(&follow), &greedy(16), |_| true).unwrap();
    assert_eq!(got.generated_ids, want.generated_ids, "{:?}", o.kv);
    assert_eq!(got.stats.reused_tokens, want.stats.reused_tokens, "only the new tokens are computed");
    assert_eq!(got.kv, want.kv);
}

#[test]
fn a_restored_cache_continues_exactly() {
    round_trip(opts(64, KvDType::F32, None));
    round_trip(opts(64, KvDType::F16, None));
    round_trip(opts(32, KvDType::F32, Some(ColdConfig { capacity: 256, bits: ColdBits::Eight, recall: 64 })));
    round_trip(opts(32, KvDType::F16, Some(ColdConfig { capacity: 96, bits: ColdBits::Four, recall: 64 })));
}

#[test]
fn bad_session_files_are_typed_errors_and_the_engine_stays_usable() {
    let bytes = tiny_bytes();
    let o = opts(32, KvDType::F32, Some(ColdConfig { capacity: 128, bits: ColdBits::Eight, recall: 32 }));
    let mut e = Engine::load(&bytes, o.clone()).unwrap();
    let p = ids(90, 1, 64);
    e.generate(Prompt::Ids(&p), &greedy(5), |_| true).unwrap();
    let image = e.save_session().unwrap();
    let before = e.cached_tokens().to_vec();

    let mut flipped = image.clone();
    flipped[image.len() / 2] ^= 0x40;
    let mut truncated = image.clone();
    truncated.truncate(image.len() - 100);
    let foreign = {
        let other = kvchat::testing::TinyGguf::new_f32(8).to_bytes();
        let mut f = Engine::load(&other, o.clone()).unwrap();
        f.generate(Prompt::Ids(&p), &greedy(2), |_| true).unwrap();
        f.save_session().unwrap()
    };
    let other_window = {
        let mut f = Engine::load(&bytes, opts(48, KvDType::F32, o.kv.cold)).unwrap();
        f.generate(Prompt::Ids(&p), &greedy(2), |_| true).unwrap();
        f.save_session().unwrap()
    };
    for (what, file) in [("corrupt", flipped), ("truncated", truncated), ("another model", foreign), ("another window", other_window), ("not one", b"hello".to_vec()), ("empty", vec![])] {
        let err = e.restore_session(&file).unwrap_err();
        assert!(matches!(err, Error::Session(_)), "{what}: {err}");
        assert_eq!(err.kind(), "session");
        assert_eq!(e.cached_tokens(), &before[..], "{what}: the cache is as it was");
    }
    // Still usable: the same continuation as before the failed restores.
    let mut fresh = Engine::load(&bytes, o).unwrap();
    fresh.restore_session(&image).unwrap();
    let a = e.generate(Prompt::Ids(&p), &greedy(8), |_| true).unwrap().generated_ids;
    let b = fresh.generate(Prompt::Ids(&p), &greedy(8), |_| true).unwrap().generated_ids;
    assert_eq!(a, b);
}

/// The checksum only tells corruption from a file: a hostile file can carry a
/// valid one. Images mutated (bytes flipped, words set to extreme lengths and
/// ids, NaN and infinite values) and then re-sealed with a correct checksum
/// either restore or give a typed session error, never a panic, and the
/// engine generates afterwards either way.
#[test]
fn hostile_session_files_with_valid_checksums_never_panic() {
    let bytes = tiny_bytes();
    for (cold, dtype) in [(ColdConfig { capacity: 128, bits: ColdBits::Eight, recall: 32 }, KvDType::F32), (ColdConfig { capacity: 96, bits: ColdBits::Four, recall: 64 }, KvDType::F16)] {
        let o = opts(32, dtype, Some(cold));
        let mut e = Engine::load(&bytes, o).unwrap();
        let p = ids(120, 3, 64);
        e.generate(Prompt::Ids(&p), &greedy(4), |_| true).unwrap();
        let image = e.save_session().unwrap();
        let body = image.len() - 8;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let words: [u64; 8] = [0, 1, 2, 31, 32, 33, u32::MAX as u64, u64::MAX];
        let floats = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MAX, 1e-45];
        // Where lengths, counts and ids are likely to sit: words with small values.
        let small: Vec<usize> = (24..body - 8).filter(|&at| (1..1 << 20).contains(&u64::from_le_bytes(image[at..at + 8].try_into().unwrap()))).collect();
        let (mut restored, mut refused) = (0, 0);
        for round in 0..400 {
            let mut file = image.clone();
            for _ in 0..1 + next() % 3 {
                // Past the magic, version and model fingerprint (checked before anything is read).
                let at = 24 + (next() as usize) % (body - 24);
                match round % 4 {
                    3 => {
                        let at = small[next() as usize % small.len()];
                        let was = u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
                        let to = [words[next() as usize % words.len()], was.wrapping_add(1), was.wrapping_sub(1), was * 2];
                        file[at..at + 8].copy_from_slice(&to[next() as usize % 4].to_le_bytes());
                    }
                    0 => file[at] ^= 1 << (next() % 8),
                    1 => {
                        let at = (at / 8 * 8).min(body - 8);
                        file[at..at + 8].copy_from_slice(&words[next() as usize % words.len()].to_le_bytes());
                    }
                    _ => {
                        let at = (at / 4 * 4).min(body - 4);
                        file[at..at + 4].copy_from_slice(&floats[next() as usize % floats.len()].to_le_bytes());
                    }
                }
            }
            let sum = file[..body].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
            file[body..].copy_from_slice(&sum.to_le_bytes());
            match e.restore_session(&file) {
                Ok(()) => restored += 1,
                Err(err) => {
                    assert!(matches!(err, Error::Session(_)), "round {round}: {err}");
                    refused += 1;
                }
            }
            e.generate(Prompt::Ids(&p[..20]), &greedy(2), |_| true).unwrap_or_else(|err| panic!("round {round}: the engine is unusable after a hostile file: {err}"));
        }
        assert!(restored > 0 && refused > 0, "both kinds of outcome are exercised: {restored} restored, {refused} refused");
    }
}

#[test]
fn a_chat_saved_and_restored_on_the_real_model_prefills_only_the_new_turn() {
    let Some(bytes) = real_model() else { return };
    let o = EngineOptions { kv: KvCacheConfig { window: 256, sinks: 4, dtype: KvDType::F32, cold: Some(ColdConfig { capacity: 1024, bits: ColdBits::Eight, recall: 128 }) }, ..Default::default() };
    let mut messages = vec![Message::new("user", "Tell me about the history of Rome in a few sentences.")];
    let mut kept = Engine::load(&bytes, o.clone()).unwrap();
    let a = kept.generate(Prompt::Chat(&messages), &greedy(300), |_| true).unwrap();
    messages.push(Message::new("assistant", a.text.clone()));
    messages.push(Message::new("user", "And of Carthage?"));
    let image = kept.save_session().unwrap();
    let want = kept.generate(Prompt::Chat(&messages), &greedy(24), |_| true).unwrap();
    let mut restored = Engine::load(&bytes, o).unwrap();
    restored.restore_session(&image).unwrap();
    let got = restored.generate(Prompt::Chat(&messages), &greedy(24), |_| true).unwrap();
    assert_eq!(got.text, want.text);
    assert_eq!(got.stats.reused_tokens, want.stats.reused_tokens);
    assert!(got.stats.prompt_tokens - got.stats.reused_tokens < 40, "{:?}", got.stats);
    eprintln!(
        "session: {} bytes for {} tokens; next turn: {} new prompt tokens, time to first token {:.1} ms restored vs {:.1} ms kept",
        image.len(), a.stats.prompt_tokens + a.stats.generated_tokens, got.stats.prompt_tokens - got.stats.reused_tokens,
        got.stats.time_to_first_token_ms, want.stats.time_to_first_token_ms
    );
}
