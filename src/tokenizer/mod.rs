//! The tokenizer, built from the GGUF's own `tokenizer.ggml.*` metadata.
//!
//! Two kinds of vocabulary, as `tokenizer.ggml.model` names them:
//! - `gpt2`: byte-level BPE ([`bpe`]: the `tokenizers` crate's pre-tokenizers, llama.cpp's merges);
//! - `llama`: SentencePiece with scores ([`sentencepiece`], llama.cpp's `llm_tokenizer_spm`).
//!
//! Both split control and user-defined tokens out of the text first, as llama.cpp
//! does with `parse_special = true`. Decoding maps each id back to its bytes, and
//! [`StreamDecoder`] only releases complete UTF-8 characters, so a character
//! split across tokens streams correctly.

mod bpe;
mod packed;
mod sentencepiece;
mod specials;
mod stream;

pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use crate::gguf::Metadata;
use packed::Packed;
use std::sync::Arc;
use sentencepiece::SentencePiece;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

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

/// The encoder proper, by vocabulary kind.
enum Model {
    Bpe(bpe::ByteLevelBpe),
    Spm(SentencePiece),
}

impl Model {
    /// `text`'s ids (special tokens parsed, no BOS) and, with `boundaries`,
    /// (end byte, ids so far) after every special token.
    fn encode(&self, text: &str, special: &[bool], boundaries: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        match self {
            Model::Bpe(b) => b.encode(text, special, boundaries),
            Model::Spm(s) => s.encode(text, special, boundaries),
        }
    }
}

pub struct Tokenizer {
    model: Model,
    /// Each token's bytes (empty for control tokens, which print nothing).
    bytes: Packed,
    /// Each token's vocabulary entry (shared with a SentencePiece encoder, which looks them up).
    texts: Arc<Packed>,
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

/// The vocabulary: each token's text and llama.cpp type (1, normal, when the file gives none).
fn read_vocabulary(g: &Metadata) -> Result<(Vec<&str>, Vec<i64>)> {
    let tokens = g.get_string_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(Error::Metadata { key: "tokenizer.ggml.tokens".into(), reason: "empty vocabulary".into() });
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(Error::Metadata { key: "tokenizer.ggml.tokens".into(), reason: format!("{} tokens is too many", tokens.len()) });
    }
    let types: Vec<i64> = match g.metadata("tokenizer.ggml.token_type") {
        Some(_) => g
            .get_array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.to_i32().map(i64::from).unwrap_or(TOKEN_TYPE_NORMAL))
            .collect(),
        None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::Metadata {
            key: "tokenizer.ggml.token_type".into(),
            reason: format!("{} types for {} tokens", types.len(), tokens.len()),
        });
    }
    Ok((tokens, types))
}

/// The token id stored under `key`, if it is present, an integer and inside the vocabulary.
fn token_id(g: &Metadata, key: &str, vocab_size: usize) -> Option<u32> {
    g.get_u64(key).ok().filter(|&i| i < vocab_size as u64).map(|i| i as u32)
}

/// The ids that end a generation: the file's EOS/EOT/EOM ids and the control tokens llama.cpp
/// treats as end-of-generation ([`EOG_TEXTS`]), sorted and deduplicated.
fn end_of_generation_ids(g: &Metadata, tokens: &[&str], special: &[bool]) -> Vec<u32> {
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

/// What differs between the vocabulary kinds: the encoder, each token's printed bytes,
/// which tokens are special (control), and whether BOS is added when the file does not say.
struct Parts {
    model: Model,
    texts: Arc<Packed>,
    bytes: Packed,
    special: Vec<bool>,
    add_bos_default: bool,
}

fn build_parts(g: &Metadata, tokens: &[&str], types: &[i64]) -> Result<Parts> {
    match g.get_str("tokenizer.ggml.model")? {
        "gpt2" => Ok(Parts {
            model: Model::Bpe(bpe::ByteLevelBpe::from_gguf(g, tokens, types)?),
            texts: Arc::new(Packed::texts(tokens)),
            bytes: bpe::vocabulary_bytes(tokens, types),
            special: types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect(),
            add_bos_default: false,
        }),
        // llama.cpp's defaults for SentencePiece: BOS added, unknown tokens special too.
        "llama" => {
            let spm = SentencePiece::from_gguf(g, tokens, types)?;
            Ok(Parts {
                texts: spm.pieces.clone(),
                model: Model::Spm(spm),
                bytes: sentencepiece::vocabulary_bytes(tokens, types),
                special: types.iter().map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_UNKNOWN).collect(),
                add_bos_default: true,
            })
        }
        other => Err(Error::Unsupported(format!(
            "tokenizer model `{other}`: kvchat supports byte-level BPE (`gpt2`) and SentencePiece (`llama`) vocabularies"
        ))),
    }
}

impl Tokenizer {
    /// Builds the tokenizer from the GGUF's `tokenizer.ggml.*` metadata, checking it first.
    pub fn from_gguf(g: &Metadata) -> Result<Self> {
        let (tokens, types) = read_vocabulary(g)?;
        let Parts { model, texts, bytes, special, add_bos_default } = build_parts(g, &tokens, &types)?;
        let id = |key: &str| token_id(g, key, tokens.len());
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let eog = end_of_generation_ids(g, &tokens, &special);
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default) && bos.is_some();
        Ok(Self {
            model,
            bytes,
            texts,
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
            ids.extend(self.model.encode(text, &self.special, false)?.0);
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
            let (more, ends) = self.model.encode(text, &self.special, true)?;
            let before = first_index + ids.len();
            boundaries.extend(ends.into_iter().map(|(end, n)| (base + end, before + n)));
            ids.extend(more);
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
            self.texts.get(id as usize).unwrap_or(&[])
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
        self.texts.text(id as usize)
    }
    /// The raw bytes a token prints (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).unwrap_or(&[])
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

