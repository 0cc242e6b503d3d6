//! A hand-built SentencePiece vocabulary: merges by score, ties, byte fallback, `▁`.

use super::SentencePiece;
use crate::gguf::Gguf;
use crate::testing::TinyGguf;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use candle_core::quantized::gguf_file::Value;

/// (text, type, score): control tokens, a user-defined run of spaces, the 256 byte
/// tokens, then pieces whose scores decide the merges.
fn vocabulary() -> Vec<(String, i32, f32)> {
    let mut v: Vec<(String, i32, f32)> = vec![("<unk>".into(), 2, 0.0), ("<s>".into(), 3, 0.0), ("</s>".into(), 3, 0.0), ("  ".into(), 4, 0.0)];
    v.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6, 0.0)));
    let pieces = [("▁", -10.0), ("a", -1.0), ("b", -1.0), ("c", -1.0), ("d", -1.0), ("ab", -3.0), ("bc", -2.0), ("cd", -2.0), ("▁a", -4.0), ("▁ab", -5.0)];
    v.extend(pieces.iter().map(|&(t, s)| (t.to_string(), 1, s)));
    v
}

fn spm(add_space_prefix: bool) -> (SentencePiece, Vec<String>) {
    let v = vocabulary();
    let texts: Vec<String> = v.iter().map(|t| t.0.clone()).collect();
    let tokens: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let types: Vec<i64> = v.iter().map(|t| t.1 as i64).collect();
    let special: Vec<f32> = v.iter().map(|t| t.2).collect();
    (SentencePiece::new(&tokens, &types, special, Some(0), add_space_prefix).unwrap(), texts)
}

/// The pieces `text` encodes to.
fn pieces(s: &SentencePiece, texts: &[String], text: &str) -> Vec<String> {
    let special = vec![false; texts.len()];
    s.encode(text, &special, false).unwrap().0.iter().map(|&i| texts[i as usize].clone()).collect()
}

#[test]
fn sentencepiece_merges_the_best_scoring_pair_first() {
    let (s, t) = spm(false);
    // "bc" (-2) beats "ab" (-3); no "abc", so the pieces stay apart.
    assert_eq!(pieces(&s, &t, "abc"), ["a", "bc"]);
    // "bc" and "cd" tie at -2: the leftmost pair merges.
    assert_eq!(pieces(&s, &t, "bcd"), ["bc", "d"]);
    // Merges chain: "ab" first, then "▁" + "ab" (never "▁a", which scores worse than "ab").
    assert_eq!(pieces(&s, &t, "ab ab"), ["ab", "▁ab"]);
}

#[test]
fn sentencepiece_space_prefix_and_special_tokens() {
    let (s, t) = spm(true);
    assert_eq!(pieces(&s, &t, "ab"), ["▁ab"]);
    // Every fragment after a special token gets the prefix too; the user-defined "  " is matched first.
    assert_eq!(pieces(&s, &t, "a<s>b  a"), ["▁a", "<s>", "▁", "b", "  ", "▁a"]);
    let (s, t) = spm(false);
    assert_eq!(pieces(&s, &t, "a</s>b"), ["a", "</s>", "b"]);
}

#[test]
fn sentencepiece_falls_back_to_bytes() {
    let (s, t) = spm(false);
    assert_eq!(pieces(&s, &t, "aé"), ["a", "<0xC3>", "<0xA9>"]);
    // With no byte tokens, the unknown token stands in.
    let no_bytes = SentencePiece::new(&["<unk>", "a"], &[2, 1], vec![0.0, -1.0], Some(0), false).unwrap();
    assert_eq!(no_bytes.encode("ax", &[false, false], false).unwrap().0, [1, 0]);
    let no_unk = SentencePiece::new(&["a"], &[1], vec![-1.0], None, false).unwrap();
    assert!(matches!(no_unk.encode("ax", &[false], false), Err(crate::Error::Tokenizer(_))));
}

fn gguf_with(v: &[(String, i32, f32)], scores: Option<Value>) -> Vec<u8> {
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.model", Value::String("llama".into()));
    g.remove("tokenizer.ggml.merges");
    g.set("tokenizer.ggml.tokens", Value::Array(v.iter().map(|t| Value::String(t.0.clone())).collect()));
    g.set("tokenizer.ggml.token_type", Value::Array(v.iter().map(|t| Value::I32(t.1)).collect()));
    match scores {
        Some(s) => g.set("tokenizer.ggml.scores", s),
        None => g.remove("tokenizer.ggml.scores"),
    }
    g.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    g.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    g.remove("tokenizer.ggml.add_bos_token");
    g.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    g.to_bytes()
}

#[test]
fn sentencepiece_tokenizer_from_gguf_encodes_and_decodes() {
    let v = vocabulary();
    let bytes = gguf_with(&v, Some(Value::Array(v.iter().map(|t| Value::F32(t.2)).collect())));
    let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    let text = "ab ab<s>cé  d";
    let ids = tok.encode(text).unwrap();
    // BOS is added when the file does not say (llama.cpp's default for SentencePiece).
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode_bytes(&ids[1..]), text.as_bytes());
    assert_eq!(tok.decode(&ids), "ab abcé  d");
    let mut stream = StreamDecoder::new();
    let streamed: String = ids.iter().map(|&i| stream.push(&tok, i)).collect();
    assert_eq!(streamed + &stream.finish(), "ab abcé  d");
    assert!(tok.is_eog(2));
}

#[test]
fn sentencepiece_refuses_missing_or_short_scores() {
    let v = vocabulary();
    for scores in [None, Some(Value::Array(vec![Value::F32(0.0); 3])), Some(Value::Array(vec![Value::String("x".into()); v.len()]))] {
        let bytes = gguf_with(&v, scores);
        let err = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap_err();
        assert!(matches!(err, crate::Error::Metadata { ref key, .. } if key == "tokenizer.ggml.scores"), "{err}");
    }
}
