//! Hostile model files: every one gives a typed error (never a panic), and a
//! good model loads afterwards in the same process. `tests/web.rs` runs this
//! file in the browser too, where `usize` is 32 bits.

use candle_core::quantized::gguf_file::Value;
use kvchat::testing::TinyGguf;
use kvchat::{Engine, EngineOptions, Error};
use wasm_bindgen_test::wasm_bindgen_test;

/// A file read on demand (the browser's path: the bytes stay outside wasm memory).
struct Outside<'a>(&'a [u8]);

impl kvchat::gguf::ByteSource for Outside<'_> {
    fn byte_len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, out: &mut [u8]) -> kvchat::Result<()> {
        out.copy_from_slice(&self.0[offset as usize..][..out.len()]);
        Ok(())
    }
}

/// Loads from bytes in memory and from the same bytes read on demand: both
/// paths give the same verdict.
fn load(bytes: &[u8]) -> Result<Engine, Error> {
    let outside = Engine::load_from(&Outside(bytes), EngineOptions::default());
    let inside = Engine::load(bytes, EngineOptions::default());
    let verdict = |r: &Result<Engine, Error>| r.as_ref().err().map(|e| e.to_string());
    assert_eq!(verdict(&outside), verdict(&inside), "read in place and read on demand disagree");
    inside
}

fn expect_err(bytes: &[u8], what: &str) -> Error {
    match load(bytes) {
        Ok(_) => panic!("{what}: loaded"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn empty_short_and_foreign_files() {
    assert!(matches!(expect_err(b"", "empty"), Error::Gguf(m) if m.contains("empty")));
    assert!(matches!(expect_err(b"GG", "two bytes"), Error::Gguf(m) if m.contains("too short")));
    assert!(matches!(expect_err(b"<!DOCTYPE html><html>404</html>", "html"), Error::Gguf(m) if m.contains("not a GGUF")));
    assert!(matches!(expect_err(&[0u8; 4096], "zeros"), Error::Gguf(_)));
}

#[wasm_bindgen_test(unsupported = test)]
fn old_and_future_versions() {
    let mut b = TinyGguf::new(1).to_bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(expect_err(&b, "v1"), Error::Gguf(m) if m.contains("version 1")));
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(expect_err(&b, "v99"), Error::Gguf(m) if m.contains("version 99")));
    // v2 and v3 both load.
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    load(&b).unwrap();
}

#[wasm_bindgen_test(unsupported = test)]
fn truncated_anywhere() {
    let b = TinyGguf::new(1).to_bytes();
    // Every prefix length across the header, then a stride through the tensor data.
    let header_end = 20_000.min(b.len());
    let cuts = (0..header_end).step_by(7).chain((header_end..b.len()).step_by(997));
    for n in cuts {
        let e = expect_err(&b[..n], &format!("truncated at {n}"));
        assert!(matches!(e, Error::Gguf(_) | Error::Tensor { .. }), "truncated at {n}: {e}");
    }
    load(&b).unwrap();
}

#[wasm_bindgen_test(unsupported = test)]
fn absurd_counts_and_lengths() {
    let b = TinyGguf::new(1).to_bytes();
    // Tensor count and metadata count in the header.
    let mut x = b.clone();
    x[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&x, "tensor count");
    let mut x = b.clone();
    x[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(&x, "kv count");
    // The first key's string length.
    let mut x = b.clone();
    x[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    expect_err(&x, "key length");
    // An array with an absurd length: find the tokens array's length field.
    let key = b"tokenizer.ggml.tokens";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // After the key: u32 type (9 = array), u32 element type (8 = string), u64 length.
    assert_eq!(&b[at..at + 4], &9u32.to_le_bytes());
    let mut x = b.clone();
    x[at + 8..at + 16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    let e = expect_err(&x, "array length");
    assert!(e.to_string().contains("array"), "{e}");
}

#[wasm_bindgen_test(unsupported = test)]
fn a_huge_metadata_array_is_refused_before_allocating() {
    // 40 million u8 elements: 40 MB on disk but ~1.3 GB as parsed values.
    let mut g = TinyGguf::new(1);
    g.set("evil.array", Value::Array(Vec::new()));
    let b = g.to_bytes();
    let key = b"evil.array";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n: u64 = 40_000_000;
    let mut x = b[..at].to_vec();
    x.extend_from_slice(&9u32.to_le_bytes());
    x.extend_from_slice(&0u32.to_le_bytes()); // u8 elements
    x.extend_from_slice(&n.to_le_bytes());
    x.extend(std::iter::repeat_n(0u8, n as usize));
    x.extend_from_slice(&b[at + 4 + 4 + 8..]);
    assert!(matches!(expect_err(&x, "huge array"), Error::Memory(_)));
}

#[wasm_bindgen_test(unsupported = test)]
fn tensor_offsets_past_the_end_and_unknown_types() {
    let b = TinyGguf::new(1).to_bytes();
    let name = b"output_norm.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims u32, dims u64 * n, type u32, offset u64.
    let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    let mut x = b.clone();
    x[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = expect_err(&x, "offset");
    assert!(matches!(e, Error::Tensor { .. }), "{e}");
    let mut x = b.clone();
    x[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = expect_err(&x, "type");
    assert!(e.to_string().contains("weight type 77"), "{e}");
    // A type ggml has and no kernel here reads: refused by its name.
    let mut x = b.clone();
    x[type_at..type_at + 4].copy_from_slice(&17u32.to_le_bytes());
    let e = expect_err(&x, "iq2_xs");
    assert!(matches!(&e, Error::Unsupported(m) if m.contains("tensor output_norm.weight is IQ2_XS")), "{e}");
    // A dimension of zero and an overflowing one.
    let mut x = b.clone();
    x[at + 4..at + 12].copy_from_slice(&0u64.to_le_bytes());
    expect_err(&x, "zero dim");
    let mut x = b.clone();
    x[at + 4..at + 12].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&x, "huge dim");
    // A dimension that would wrap a 32-bit usize (wasm's) while the element count stays small.
    let mut x = b.clone();
    x[at + 4..at + 12].copy_from_slice(&(1u64 << 33).to_le_bytes());
    let e = expect_err(&x, "dim past u32");
    assert!(e.to_string().contains("larger than 2^32"), "{e}");
}

/// The offset field of tensor `name`'s entry in the table.
fn offset_field(b: &[u8], name: &[u8]) -> usize {
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims + 4
}

#[wasm_bindgen_test(unsupported = test)]
fn overlapping_and_repeated_tensors_are_refused() {
    let b = TinyGguf::new(1).to_bytes();
    // Two tensors reading the same bytes: the norm pointed at the attention output's data.
    let (from, to) = (offset_field(&b, b"blk.0.attn_output.weight"), offset_field(&b, b"output_norm.weight"));
    let mut x = b.clone();
    let shared = x[from..from + 8].to_vec();
    x[to..to + 8].copy_from_slice(&shared);
    let e = expect_err(&x, "overlap");
    assert!(e.to_string().contains("overlaps"), "{e}");
    // One name twice in the table.
    let mut x = b.clone();
    let k = x.windows(19).position(|w| w == b"blk.0.attn_k.weight").unwrap();
    x[k..k + 19].copy_from_slice(b"blk.0.attn_q.weight");
    let e = expect_err(&x, "repeated name");
    assert!(e.to_string().contains("appears twice"), "{e}");
}

#[wasm_bindgen_test(unsupported = test)]
fn unknown_architecture_and_tokenizer() {
    let mut g = TinyGguf::new(1);
    g.set("general.architecture", Value::String("mamba".into()));
    assert!(matches!(expect_err(&g.to_bytes(), "arch"), Error::Unsupported(m) if m.contains("mamba")));
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.model", Value::String("bert".into()));
    assert!(matches!(expect_err(&g.to_bytes(), "wordpiece"), Error::Unsupported(m) if m.contains("tokenizer model")));
    // A SentencePiece vocabulary without its scores.
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.model", Value::String("llama".into()));
    expect_err(&g.to_bytes(), "spm without scores");
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.pre", Value::String("klingon".into()));
    assert!(matches!(expect_err(&g.to_bytes(), "pre"), Error::Unsupported(m) if m.contains("klingon")));
}

#[wasm_bindgen_test(unsupported = test)]
fn missing_metadata_and_tensors_and_wrong_shapes() {
    for key in ["general.architecture", "llama.block_count", "llama.embedding_length", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        let mut g = TinyGguf::new(1);
        g.remove(key);
        let e = expect_err(&g.to_bytes(), key);
        assert!(e.to_string().contains(key) || matches!(e, Error::Tensor { .. }), "{key}: {e}");
    }
    let mut g = TinyGguf::new(1);
    g.remove_tensor("blk.1.ffn_up.weight");
    let e = expect_err(&g.to_bytes(), "missing tensor");
    assert!(e.to_string().contains("blk.1.ffn_up.weight"), "{e}");
    // Hyper-parameters that contradict the tensors.
    let mut g = TinyGguf::new(1);
    g.set("llama.feed_forward_length", Value::U32(128));
    let e = expect_err(&g.to_bytes(), "ff");
    assert!(matches!(e, Error::Tensor { .. }), "{e}");
    let mut g = TinyGguf::new(1);
    g.set("llama.attention.head_count_kv", Value::U32(3));
    expect_err(&g.to_bytes(), "kv heads");
    let mut g = TinyGguf::new(1);
    g.set("llama.vocab_size", Value::U32(100));
    expect_err(&g.to_bytes(), "vocab");
    let mut g = TinyGguf::new(1);
    g.set("llama.block_count", Value::I32(-3));
    expect_err(&g.to_bytes(), "negative");
    let mut g = TinyGguf::new(1);
    g.set("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN));
    expect_err(&g.to_bytes(), "nan eps");
    let mut g = TinyGguf::new(1);
    g.set("llama.block_count", Value::String("two".into()));
    expect_err(&g.to_bytes(), "string count");
}

#[wasm_bindgen_test(unsupported = test)]
fn a_good_model_loads_after_all_of_that() {
    let mut e = load(&TinyGguf::new(1).to_bytes()).unwrap();
    assert!(e.logits(&[4, 5]).is_ok());
}

#[wasm_bindgen_test(unsupported = test)]
fn merges_outside_the_vocabulary_are_refused() {
    // Found by the tokenizer_build fuzzer: the tokenizers crate indexed out of bounds on a
    // merge whose result is not in the vocabulary.
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.merges", Value::Array(vec![Value::String("Ġ t".into()), Value::String("h zz".into())]));
    let e = expect_err(&g.to_bytes(), "merge");
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");
    let mut g = TinyGguf::new(1);
    g.set("tokenizer.ggml.merges", Value::Array(vec![Value::String("e n".into()), Value::String("en e".into())]));
    let e = expect_err(&g.to_bytes(), "merge result");
    assert!(e.to_string().contains("not in the vocabulary"), "{e}");
}
