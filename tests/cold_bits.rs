//! The cold tier computes the same bits on every target: natively (AVX2 /
//! AVX-512 attention, x86) and in wasm (simd128, `tests/web.rs` includes this
//! file) the logits of every position of a sequence that goes through the
//! cold tier hash to the same value, kept in `fixtures/cold-tier-bits.txt`
//! (`KVCHAT_BLESS=1 cargo test --release --test cold_bits` rewrites it after
//! an intended change).

use kvchat::testing::TinyGguf;
use kvchat::{ColdBits, ColdConfig, Engine, EngineOptions, KvCacheConfig, KvDType};
use wasm_bindgen_test::wasm_bindgen_test;

const FIXTURE: &str = include_str!("fixtures/cold-tier-bits.txt");

/// FNV-1a over the bits of every logit of every position, one hash per configuration.
fn hashes() -> Vec<String> {
    // Every matrix in a format with an own kernel: those give the same bits on every target
    // (candle's F32 matmuls do not).
    let bytes = TinyGguf::new_f32(11).requantized().to_bytes();
    let mut rng = kvchat::sampler::Rng::new(3);
    let ids: Vec<u32> = (0..300).map(|_| 3 + (rng.next_u64() % 61) as u32).collect();
    let mut out = Vec::new();
    for (bits, dtype, chunk) in [(ColdBits::Eight, KvDType::F32, 64), (ColdBits::Four, KvDType::F16, 7)] {
        let kv = KvCacheConfig { window: 48, sinks: 4, dtype, cold: Some(ColdConfig { capacity: 160, bits, recall: 64 }) };
        let mut e = Engine::load(&bytes, EngineOptions { kv, prefill_chunk: chunk, ..Default::default() }).unwrap();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for row in e.logits_all(&ids).unwrap() {
            for x in row {
                for b in x.to_bits().to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        assert!(e.kv_stats().cold.unwrap().evicted > 0, "the sequence goes past the cold tier");
        out.push(format!("{bits:?} {dtype:?} chunk {chunk}: {h:016x}"));
    }
    out
}

#[wasm_bindgen_test(unsupported = test)]
fn the_cold_tier_gives_the_same_bits_natively_and_in_wasm() {
    let got = hashes().join("\n") + "\n";
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var("KVCHAT_BLESS").as_deref() == Ok("1") {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cold-tier-bits.txt"), &got).unwrap();
        return;
    }
    assert_eq!(got, FIXTURE, "the cold tier's logits differ from the recorded bits");
}
