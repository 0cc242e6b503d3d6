//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`: Llama 2, Gemma, …),
//! encoded as llama.cpp's `llm_tokenizer_spm` does.
//!
//! Control, user-defined and unknown tokens are split out of the text first. Each
//! remaining fragment gets its spaces replaced by `▁` (U+2581), and a leading `▁`
//! when `tokenizer.ggml.add_space_prefix` says so; it starts as single characters,
//! and the adjacent pair whose concatenation is the best-scoring vocabulary entry is
//! merged until no pair is in the vocabulary (ties go to the leftmost pair). A
//! character that is no token is written as its UTF-8 bytes' `<0xXX>` tokens.
//!
//! The merge is written here rather than taken from the `tokenizers` crate: its
//! `Unigram` model picks the most likely segmentation as a whole (Viterbi over the
//! scores), which is not llama.cpp's greedy pair merging, and its `BPE` model needs
//! a ranked merge list that SentencePiece GGUFs do not carry. One synthesised from
//! the scores would rank pairs making the same token arbitrarily, where llama.cpp
//! takes the leftmost, so neither gives llama.cpp's ids on every input.

use super::{token_id, TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::gguf::Metadata;
use super::packed::Packed;
use hashbrown::hash_table::{Entry, HashTable};
use std::sync::Arc;
use super::specials::{encode_around, SpecialTokens};
use candle_core::quantized::gguf_file::Value;
use std::collections::BinaryHeap;

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';

pub(super) struct SentencePiece {
    /// Every piece's text (shared with the tokenizer, which prints them).
    pub(super) pieces: Arc<Packed>,
    /// Piece text → id, each id hashed by its text in `pieces` (no string of its own
    /// per piece: Gemma's 262,144 of them took 44-78 ms to allocate). A repeated text
    /// keeps its last id, as llama.cpp's `token_to_id` does.
    ids: HashTable<u32>,
    hasher: ahash::RandomState,
    scores: Vec<f32>,
    /// The token of each byte (`<0xXX>`), for characters no piece covers.
    byte_ids: [Option<u32>; 256],
    unknown: Option<u32>,
    /// Control, user-defined and unknown tokens, matched in the text first.
    specials: Option<SpecialTokens>,
    add_space_prefix: bool,
}

/// One piece of the text being merged: a byte range and its neighbours (a linked list).
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    /// Bytes; 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols, ordered best first by [`BinaryHeap`].
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Higher score first; at equal scores, the leftmost pair.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

/// `tokenizer.ggml.scores`: one number per token.
fn read_scores(g: &Metadata, n: usize) -> Result<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    let bad = |reason: String| Error::Metadata { key: KEY.into(), reason };
    let values = g.get_array(KEY)?;
    if values.len() != n {
        return Err(bad(format!("{} scores for {n} tokens", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            // -0.0 and 0.0 tie, as in llama.cpp's float comparison.
            Value::F32(x) => Ok(if *x == 0.0 { 0.0 } else { *x }),
            Value::F64(x) => Ok(if *x == 0.0 { 0.0 } else { *x as f32 }),
            _ => Err(bad(format!("element {i} is not a number"))),
        })
        .collect()
}

/// The byte a `<0xXX>` token stands for.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Each token's printed bytes: `▁` as a space in normal tokens, user-defined tokens
/// as written, byte tokens as their byte, nothing for the rest (control, unknown, unused).
pub(super) fn vocabulary_bytes(tokens: &[&str], types: &[i64]) -> Packed {
    let total = tokens.iter().map(|t| t.len()).sum();
    Packed::build(tokens.len(), total, |i, out| {
        let t = tokens[i];
        match types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL) {
            TOKEN_TYPE_NORMAL => {
                let mut utf8 = [0; 4];
                for c in t.chars() {
                    out.extend_from_slice(if c == SPACE { " " } else { c.encode_utf8(&mut utf8) }.as_bytes());
                }
            }
            TOKEN_TYPE_USER_DEFINED => out.extend_from_slice(t.as_bytes()),
            TOKEN_TYPE_BYTE => out.extend(byte_of(t)),
            _ => {}
        }
    })
}

impl SentencePiece {
    pub(super) fn from_gguf(g: &Metadata, tokens: &[&str], types: &[i64]) -> Result<Self> {
        let scores = read_scores(g, tokens.len())?;
        let unknown = token_id(g, "tokenizer.ggml.unknown_token_id", tokens.len());
        // llama.cpp adds the space prefix to SentencePiece vocabularies unless the file says not to.
        let add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
        Self::new(tokens, types, scores, unknown, add_space_prefix)
    }

    fn new(tokens: &[&str], types: &[i64], scores: Vec<f32>, unknown: Option<u32>, add_space_prefix: bool) -> Result<Self> {
        if scores.len() != tokens.len() || types.len() != tokens.len() || u32::try_from(tokens.len()).is_err() {
            return Err(Error::Tokenizer(format!("{} tokens, {} types, {} scores", tokens.len(), types.len(), scores.len())));
        }
        let pieces = Arc::new(Packed::texts(tokens));
        let hasher = ahash::RandomState::new();
        let mut ids = HashTable::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let same_text = |&id: &u32| pieces.get(id as usize) == Some(t.as_bytes());
            match ids.entry(hasher.hash_one(t.as_bytes()), same_text, |&id: &u32| hasher.hash_one(pieces.get(id as usize).unwrap_or(&[]))) {
                Entry::Occupied(mut e) => *e.get_mut() = i as u32,
                Entry::Vacant(e) => {
                    e.insert(i as u32);
                }
            }
        }
        let mut spm = Self { pieces, ids, hasher, scores, byte_ids: [None; 256], unknown, specials: None, add_space_prefix };
        for b in 0..256 {
            // llama.cpp's `byte_to_token`: `<0xXX>`, else the byte itself as a piece.
            let single = (b < 0x80).then(|| char::from(b as u8).to_string());
            spm.byte_ids[b] = spm.id_of(&format!("<0x{b:02X}>")).or_else(|| single.and_then(|s| spm.id_of(&s)));
        }
        spm.specials = SpecialTokens::new(tokens, types, |ty| matches!(ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN))?;
        Ok(spm)
    }

    /// The id of the piece `text`, if the vocabulary has it.
    fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.find(self.hasher.hash_one(text.as_bytes()), |&id| self.pieces.get(id as usize) == Some(text.as_bytes())).copied()
    }

    /// `text`'s ids and, with `boundaries`, (end byte, ids so far) after every special token.
    pub(super) fn encode(&self, text: &str, special: &[bool], boundaries: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        encode_around(self.specials.as_ref(), text, special, boundaries, |fragment, out| self.encode_fragment(fragment, out))
    }

    /// One fragment between special tokens. llama.cpp prefixes a space when the fragment
    /// follows a special token or starts the text: always, as fragments never touch.
    fn encode_fragment(&self, raw: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut text = String::with_capacity(raw.len() + 3 + 2 * raw.matches(' ').count());
        if self.add_space_prefix {
            text.push(SPACE);
        }
        text.extend(raw.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let symbols = self.merge(&text);
        let mut next = (!symbols.is_empty()).then_some(0);
        while let Some(i) = next {
            let s = symbols[i];
            self.emit(&text[s.start..s.start + s.len], out)?;
            next = s.next;
        }
        Ok(())
    }

    /// The text as characters, merged pair by pair, best score first.
    fn merge(&self, text: &str) -> Vec<Symbol> {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) })
            .collect();
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (left, right) = (symbols[b.left], symbols[b.right]);
            // Stale: one side has been merged since the pair was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != b.len {
                continue;
            }
            symbols[b.left].len = b.len;
            symbols[b.left].next = right.next;
            symbols[b.right].len = 0;
            if let Some(n) = right.next {
                symbols[n].prev = Some(b.left);
                self.push_bigram(text, &symbols, b.left, n, &mut queue);
            }
            if let Some(p) = left.prev {
                self.push_bigram(text, &symbols, p, b.left, &mut queue);
            }
        }
        symbols
    }

    /// Queues the merge of two adjacent symbols if their concatenation is a token.
    fn push_bigram(&self, text: &str, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Bigram>) {
        let len = symbols[left].len + symbols[right].len;
        let start = symbols[left].start;
        let Some(id) = text.get(start..start + len).and_then(|piece| self.id_of(piece)) else { return };
        if let Some(&score) = self.scores.get(id as usize) {
            queue.push(Bigram { score, left, right, len });
        }
    }

    /// A merged symbol's token, or its bytes' tokens when it is none (a lone character;
    /// merged symbols are always tokens, so llama.cpp's re-segmentation never applies).
    fn emit(&self, piece: &str, out: &mut Vec<u32>) -> Result<()> {
        if let Some(id) = self.id_of(piece) {
            out.push(id);
            return Ok(());
        }
        for b in piece.bytes() {
            let id = self.byte_ids[b as usize].or(self.unknown).ok_or_else(|| {
                Error::Tokenizer(format!("no token for byte 0x{b:02X} of `{piece}` and no unknown token"))
            })?;
            out.push(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
