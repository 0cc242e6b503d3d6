//! Gemma 3's SentencePiece tokenizer (`tokenizer.ggml.model = llama`: scores, 256 byte
//! tokens, user-defined whitespace runs, no space prefix, BOS added) against llama.cpp's
//! ids. `make models` fetches the model; CI sets KVCHAT_REQUIRE_MODEL so these never skip
//! there. The reference (`fixtures/gemma3-llamacpp.json`) is copied from
//! `../shared/reference/models/gemma3-golden.json` (llama-cpp-python 0.3.36): `tokenize`
//! without BOS, special tokens parsed; the `generate` prompts with BOS.

use kvchat::gguf::Gguf;
use kvchat::tokenizer::{IncrementalEncoder, StreamDecoder, Tokenizer};
use serde_json::Value;

const MODEL: &str = "models/gemma-3-270m-q4_k_m.gguf";

fn model() -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) if std::env::var("KVCHAT_REQUIRE_MODEL").is_ok() => panic!("{} is missing and KVCHAT_REQUIRE_MODEL is set: run `make models`", path.display()),
        Err(_) => {
            eprintln!("SKIPPED: {} is missing (run `make models` to fetch it)", path.display());
            None
        }
    }
}

fn tokenizer(bytes: &[u8]) -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::parse(bytes).unwrap()).unwrap()
}

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/gemma3-llamacpp.json")).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every reference text without BOS and every prompt with it, as `(text, ids)`.
fn cases(tok: &Tokenizer) -> Vec<(String, Vec<u32>)> {
    let r = reference();
    let bos = tok.bos().unwrap();
    let mut out: Vec<(String, Vec<u32>)> = r["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), [&[bos][..], &ids_of(&c["ids"])].concat()))
        .collect();
    out.extend(r["generate"].as_array().unwrap().iter().map(|p| (p["prompt"].as_str().unwrap().to_string(), ids_of(&p["prompt_ids"]))));
    assert_eq!(out.len(), 19);
    out
}

#[test]
fn gemma3_tokenizer_is_sentencepiece_with_bos_and_turn_tokens() {
    let Some(bytes) = model() else { return };
    let tok = tokenizer(&bytes);
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!((tok.bos(), tok.eos(), tok.has_bos_prefix()), (Some(2), Some(1), true));
    assert_eq!(tok.eog_ids(), [1, 106]);
    assert_eq!(tok.encode_part_text("<start_of_turn><end_of_turn>").unwrap(), [105, 106]);
}

#[test]
fn gemma3_tokenization_equals_llama_cpp() {
    let Some(bytes) = model() else { return };
    let tok = tokenizer(&bytes);
    for (text, ids) in cases(&tok) {
        assert_eq!(tok.encode(&text).unwrap(), ids, "{text:?}");
        // The incremental encoder (chat turns) gives the same ids.
        assert_eq!(IncrementalEncoder::default().encode(&tok, &text).unwrap(), ids, "{text:?}");
    }
}

#[test]
fn gemma3_decoding_round_trips() {
    let Some(bytes) = model() else { return };
    let tok = tokenizer(&bytes);
    for (text, ids) in cases(&tok) {
        // BOS is no text; control tokens come back as their own text in the prompt bytes.
        assert_eq!(tok.decode_bytes(&ids[1..]), text.as_bytes(), "{text:?}");
        let mut stream = StreamDecoder::new();
        let mut streamed: String = ids.iter().map(|&i| stream.push(&tok, i)).collect();
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, tok.decode(&ids), "{text:?}");
        assert_eq!(streamed, text.replace("<start_of_turn>", "").replace("<end_of_turn>", ""), "{text:?}");
    }
}
