//! The tokenizer, built from the GGUF's own `tokenizer.ggml.*` metadata.
//!
//! Encoding uses the `tokenizers` crate (byte-level BPE with the pre-tokenizer
//! that `tokenizer.ggml.pre` names, control tokens split out as llama.cpp does
//! with `parse_special = true`). Decoding maps each id back to its bytes, and
//! [`StreamDecoder`] only releases complete UTF-8 characters, so a character
//! split across tokens streams correctly.

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// llama.cpp's token types.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Texts that llama.cpp treats as end-of-generation when they are control tokens.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`): llama 3's, with digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Each token's bytes (empty for control tokens, which print nothing).
    bytes: Vec<Vec<u8>>,
    texts: Vec<String>,
    special: Vec<bool>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.bytes.len()).field("eog", &self.eog).finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// GPT-2's byte → printable-char table (the alphabet of byte-level BPE vocabularies).
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// A regex split, then the byte-level mapping (no regex of its own).
fn regex_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false).map_err(tok_err)?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Split(split), PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false))])))
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level_regex = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    Ok(match pre {
        // GPT-2's split.
        "default" | "gpt-2" | "gpt2" => byte_level_regex(),
        // Individual digits first, then GPT-2's split (SmolLM, StarCoder and kin).
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level_regex(),
            ]))
        }
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => regex_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => regex_then_bytes(QWEN2_SPLIT)?,
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer pre-tokenizer `{other}` (supported: default, gpt-2, smollm, starcoder, llama-bpe, qwen2)"
            )))
        }
    })
}

/// The byte-level BPE vocabulary: each token's text and llama.cpp type (1, normal, when the file gives none).
fn read_vocabulary<'g>(g: &'g Gguf) -> Result<(Vec<&'g str>, Vec<i64>)> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "tokenizer model `{model}`: kvchat supports byte-level BPE (`gpt2`) vocabularies"
        )));
    }
    let tokens = g.get_string_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(Error::Metadata { key: "tokenizer.ggml.tokens".into(), reason: "empty vocabulary".into() });
    }
    let types: Vec<i64> = match g.metadata("tokenizer.ggml.token_type") {
        Some(_) => g
            .get_array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::Metadata {
            key: "tokenizer.ggml.token_type".into(),
            reason: format!("{} types for {} tokens", types.len(), tokens.len()),
        });
    }
    Ok((tokens, types))
}

/// The BPE merges, each `tokenizer.ggml.merges` entry split at its space into a pair.
fn read_merges(g: &Gguf) -> Result<Vec<(String, String)>> {
    g.get_string_array("tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| Error::Metadata {
                key: "tokenizer.ggml.merges".into(),
                reason: format!("merge `{m}` is not two tokens separated by a space"),
            })
        })
        .collect()
}

/// The BPE model (first id of each token text wins), refusing merges the tokenizers crate cannot take.
fn build_bpe(tokens: &[&str], merges: Vec<(String, String)>) -> Result<BPE> {
    let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.to_string()).or_insert(i as u32);
    }
    // The tokenizers crate copies each merge's two parts into a buffer as long
    // as the longest token (a longer pair would index out of bounds); it checks
    // that both parts and their concatenation are in the vocabulary itself.
    let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
    if let Some((a, b)) = merges.iter().find(|(a, b)| a.len() + b.len() > longest) {
        return Err(Error::Metadata {
            key: "tokenizer.ggml.merges".into(),
            reason: format!("merge `{a} {b}` makes a token longer than any in the vocabulary"),
        });
    }
    BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| Error::Metadata {
        key: "tokenizer.ggml.merges".into(),
        reason: format!("{e} (a merge uses or makes a token that is not in the vocabulary)"),
    })
}

/// Control and user-defined tokens, matched whole before BPE (only control tokens count as special).
fn added_tokens(tokens: &[&str], types: &[i64]) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, &ty)| AddedToken::from(t.to_string(), ty == TOKEN_TYPE_CONTROL).normalized(false))
        .collect()
}

/// Each token's bytes: none for control tokens, the text itself for user-defined ones,
/// GPT-2's byte alphabet mapped back for the rest.
fn vocabulary_bytes(tokens: &[&str], types: &[i64]) -> Vec<Vec<u8>> {
    // GPT-2's byte-to-char map uses U+0021..U+0143: invert it into a table.
    let mut char_to_byte = [None::<u8>; 0x144];
    for (b, &c) in byte_to_char().iter().enumerate() {
        if let Some(slot) = char_to_byte.get_mut(c as usize) {
            *slot = Some(b as u8);
        }
    }
    tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| match ty {
            TOKEN_TYPE_CONTROL => Vec::new(),
            TOKEN_TYPE_USER_DEFINED => t.as_bytes().to_vec(),
            _ => {
                let mut out = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match char_to_byte.get(c as usize).copied().flatten() {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
        })
        .collect()
}

/// The token id stored under `key`, if it is present, an integer and inside the vocabulary.
fn token_id(g: &Gguf, key: &str, vocab_size: usize) -> Option<u32> {
    g.get_u64(key).ok().filter(|&i| (i as usize) < vocab_size).map(|i| i as u32)
}

/// The ids that end a generation: the file's EOS/EOT/EOM ids and the control tokens llama.cpp
/// treats as end-of-generation ([`EOG_TEXTS`]), sorted and deduplicated.
fn end_of_generation_ids(g: &Gguf, tokens: &[&str], special: &[bool]) -> Vec<u32> {
    let mut eog: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .iter()
        .filter_map(|k| token_id(g, k, tokens.len()))
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        if special[i] && EOG_TEXTS.contains(t) {
            eog.push(i as u32);
        }
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

impl Tokenizer {
    /// Builds the tokenizer from the GGUF's `tokenizer.ggml.*` metadata, checking it first.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let (tokens, types) = read_vocabulary(g)?;
        let merges = read_merges(g)?;
        let pre = match g.metadata("tokenizer.ggml.pre") {
            Some(_) => g.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        let bpe = build_bpe(&tokens, merges)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.add_special_tokens(added_tokens(&tokens, &types)).map_err(tok_err)?;

        let special: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let bytes = vocabulary_bytes(&tokens, &types);
        let id = |key: &str| token_id(g, key, tokens.len());
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let eog = end_of_generation_ids(g, &tokens, &special);
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false) && bos.is_some();
        Ok(Self {
            inner,
            bytes,
            texts: tokens.iter().map(|s| s.to_string()).collect(),
            special,
            eog,
            bos,
            eos,
            add_bos,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Tokenizes `text` with special tokens parsed, prepending BOS when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        if !text.is_empty() {
            let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
            ids.extend_from_slice(enc.get_ids());
        }
        Ok(ids)
    }

    /// Tokenizes `text` (which starts at byte `base` of a larger text whose first
    /// `first_index` ids are already known), returning its ids and the
    /// (end byte, id count) after every special token.
    fn encode_part(&self, text: &str, base: usize, first_index: usize, bos: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let mut ids = Vec::new();
        if bos && self.add_bos {
            ids.extend(self.bos);
        }
        let mut boundaries = Vec::new();
        if !text.is_empty() {
            let enc = self.inner.encode(text, false).map_err(tok_err)?;
            for (&id, &(_, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                ids.push(id);
                if self.is_special(id) {
                    boundaries.push((base + end, first_index + ids.len()));
                }
            }
        }
        Ok((ids, boundaries))
    }

    /// Tokenizes a piece of a larger text (never adds BOS).
    pub fn encode_part_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_part(text, 0, 0, false)?.0)
    }

    /// True when every encoding starts with a BOS the text does not contain.
    pub fn has_bos_prefix(&self) -> bool {
        self.add_bos
    }

    /// The text a token stands for in a prompt: its bytes, or a control token's own text.
    pub fn raw_bytes(&self, id: u32) -> &[u8] {
        if self.is_special(id) {
            self.texts.get(id as usize).map(|t| t.as_bytes()).unwrap_or(&[])
        } else {
            self.token_bytes(id)
        }
    }

    /// The prompt text of `ids` as bytes, control tokens included (the inverse of `encode`).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|&i| self.raw_bytes(i).iter().copied()).collect()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
    /// The vocabulary entry of a token (byte-level alphabet for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|s| s.as_str())
    }
    /// The raw bytes a token prints (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(|b| b.as_slice()).unwrap_or(&[])
    }

    /// Decodes ids to text (invalid UTF-8 replaced, control tokens omitted).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Tokenizes a text that usually extends the previous one (the next chat turn
/// re-renders the whole conversation): only what follows the last special token
/// the two texts share is tokenized again. Tokenization never crosses a special
/// token, so the ids equal those of tokenizing the whole text, while the work
/// (and the memory it needs) stays proportional to the new turn.
#[derive(Debug, Default, Clone)]
pub struct IncrementalEncoder {
    text: String,
    ids: Vec<u32>,
    /// (end byte in `text`, number of ids up to there) after each special token.
    boundaries: Vec<(usize, usize)>,
}

impl IncrementalEncoder {
    pub fn encode(&mut self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let common = self.text.bytes().zip(text.bytes()).take_while(|(a, b)| a == b).count();
        let (b, n) = self.boundaries.iter().rev().find(|(b, _)| *b <= common).copied().unwrap_or((0, 0));
        let (mut ids, mut boundaries) = if n == 0 {
            (Vec::new(), Vec::new())
        } else {
            (self.ids[..n].to_vec(), self.boundaries.iter().copied().filter(|&(e, _)| e <= b).collect())
        };
        let start = if n == 0 { 0 } else { b };
        let (more, more_b) = tok.encode_part(&text[start..], start, ids.len(), n == 0)?;
        ids.extend(more);
        boundaries.extend(more_b);
        self.text.clear();
        self.text.push_str(text);
        self.ids.clone_from(&ids);
        self.boundaries = boundaries;
        Ok(ids)
    }
}

/// Turns a stream of token ids into text pieces that never split a UTF-8 character.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns whatever complete text it released.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id));
        self.take_complete()
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An invalid sequence can never complete: replace it and go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Releases what is left at the end of a generation (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
