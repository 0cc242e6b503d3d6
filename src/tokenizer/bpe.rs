//! Byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`), encoded as llama.cpp's
//! `llm_tokenizer_bpe` and the `tokenizers` crate's `BPE` model do: the pre-tokenizer that
//! `tokenizer.ggml.pre` names (the crate's) splits each stretch between special tokens
//! into words written in GPT-2's byte alphabet; a word starts as one symbol per
//! character, and the adjacent pair with the lowest merge rank (ties: the leftmost) is
//! merged until no pair has a merge.
//!
//! The merge table is built here rather than by the crate's `BPE` builder, which copies
//! every vocabulary entry and both halves of every merge into owned strings and then
//! joins them again: 22-34 ms of the 41 ms tokenizer build for SmolLM2's 49,152 tokens
//! and 48,900 merges natively. This one looks the GGUF's own strings up in place and
//! keeps only (left id, right id) -> (rank, merged id).

use super::packed::Packed;
use super::specials::{encode_around, SpecialTokens};
use super::{tok_err, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::gguf::Metadata;
use ahash::AHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`): llama 3's, with digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte alphabet ends at U+0143: the characters a word can hold.
const ALPHABET_END: usize = 0x144;

pub(super) struct ByteLevelBpe {
    pre: PreTokenizerWrapper,
    /// The token of each single character below [`ALPHABET_END`] (a word's first symbols).
    char_ids: Vec<Option<u32>>,
    /// (left id, right id) -> (rank, merged id).
    merges: AHashMap<(u32, u32), (u32, u32)>,
    /// Control and user-defined tokens, matched whole before BPE (only control tokens count as special).
    specials: Option<SpecialTokens>,
}

/// The id of a character that has no token (ids are below the vocabulary's length, a `u32`).
const NO_TOKEN: u32 = u32::MAX;

/// One symbol of a word being merged, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    /// Merged into its left neighbour.
    gone: bool,
}

/// A queued merge, popped lowest rank first, then leftmost: (rank, left symbol, merged id).
type Candidate = Reverse<(u32, usize, u32)>;

impl ByteLevelBpe {
    pub(super) fn from_gguf(g: &Metadata, tokens: &[&str], types: &[i64]) -> Result<Self> {
        let pre = match g.metadata("tokenizer.ggml.pre") {
            Some(_) => g.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        Self::new(pre_tokenizer(pre)?, tokens, types, &g.get_string_array("tokenizer.ggml.merges")?)
    }

    fn new(pre: PreTokenizerWrapper, tokens: &[&str], types: &[i64], merges: &[&str]) -> Result<Self> {
        // The first id of each token text wins.
        let mut ids: AHashMap<&str, u32> = AHashMap::with_capacity(tokens.len());
        let mut char_ids = vec![None; ALPHABET_END];
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t).or_insert(i as u32);
            let mut chars = t.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if let Some(slot @ None) = char_ids.get_mut(c as usize) {
                    *slot = Some(i as u32);
                }
            }
        }
        let merges = merge_table(&ids, merges)?;
        let specials = SpecialTokens::new(tokens, types, |ty| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)?;
        Ok(Self { pre, char_ids, merges, specials })
    }

    /// `text`'s ids and, with `boundaries`, (end byte, ids so far) after every special token.
    pub(super) fn encode(&self, text: &str, special: &[bool], boundaries: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let mut symbols = Vec::new();
        encode_around(self.specials.as_ref(), text, special, boundaries, |fragment, out| {
            let mut words = PreTokenizedString::from(fragment);
            self.pre.pre_tokenize(&mut words).map_err(tok_err)?;
            for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::None) {
                self.merge_word(word, &mut symbols, out);
            }
            Ok(())
        })
    }

    /// One word's tokens appended to `out`. A character with no token stays a symbol that
    /// merges with nothing and is left out of the ids, as in llama.cpp.
    fn merge_word(&self, word: &str, symbols: &mut Vec<Symbol>, out: &mut Vec<u32>) {
        symbols.clear();
        for c in word.chars() {
            let id = self.char_ids.get(c as usize).copied().flatten().unwrap_or(NO_TOKEN);
            let at = symbols.len();
            if let Some(last) = symbols.last_mut() {
                last.next = Some(at);
            }
            symbols.push(Symbol { id, prev: at.checked_sub(1), next: None, gone: false });
        }
        let mut queue: BinaryHeap<Candidate> = BinaryHeap::with_capacity(symbols.len());
        for left in 0..symbols.len().saturating_sub(1) {
            self.queue_pair(symbols, left, &mut queue);
        }
        while let Some(Reverse((_, left, merged))) = queue.pop() {
            let symbol = symbols[left];
            let Some(right) = symbol.next else { continue };
            // Stale: the pair at `left` has changed since it was queued and no longer makes `merged`.
            if symbol.gone || self.merges.get(&(symbol.id, symbols[right].id)).map(|m| m.1) != Some(merged) {
                continue;
            }
            let after = symbols[right].next;
            symbols[right].gone = true;
            symbols[left].id = merged;
            symbols[left].next = after;
            if let Some(n) = after {
                symbols[n].prev = Some(left);
                self.queue_pair(symbols, left, &mut queue);
            }
            if let Some(p) = symbol.prev {
                self.queue_pair(symbols, p, &mut queue);
            }
        }
        out.extend(symbols.iter().filter(|s| !s.gone && s.id != NO_TOKEN).map(|s| s.id));
    }

    /// Queues the merge of the symbol at `left` with its right neighbour, if the pair has one.
    fn queue_pair(&self, symbols: &[Symbol], left: usize, queue: &mut BinaryHeap<Candidate>) {
        let Some(right) = symbols[left].next else { return };
        if let Some(&(rank, merged)) = self.merges.get(&(symbols[left].id, symbols[right].id)) {
            queue.push(Reverse((rank, left, merged)));
        }
    }
}

/// `tokenizer.ggml.merges` as (left id, right id) -> (rank, merged id): each entry is two
/// tokens split at the first space after its first byte (llama.cpp's rule), both and their
/// concatenation in the vocabulary; a repeated pair keeps its first rank, as in llama.cpp.
fn merge_table(ids: &AHashMap<&str, u32>, merges: &[&str]) -> Result<AHashMap<(u32, u32), (u32, u32)>> {
    let bad = |reason: String| Error::Metadata { key: "tokenizer.ggml.merges".into(), reason };
    if u32::try_from(merges.len()).is_err() {
        return Err(bad(format!("{} merges is too many", merges.len())));
    }
    let mut table = AHashMap::with_capacity(merges.len());
    let mut joined = String::new();
    for (rank, m) in merges.iter().enumerate() {
        let split = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        let Some((left, right)) = split.map(|p| (&m[..p], &m[p + 1..])) else {
            return Err(bad(format!("merge `{m}` is not two tokens separated by a space")));
        };
        let (Some(&left_id), Some(&right_id)) = (ids.get(left), ids.get(right)) else {
            return Err(bad(format!("merge `{m}` uses a token that is not in the vocabulary")));
        };
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        let Some(&merged) = ids.get(joined.as_str()) else {
            return Err(bad(format!("merge result `{joined}` is not in the vocabulary")));
        };
        table.entry((left_id, right_id)).or_insert((rank as u32, merged));
    }
    Ok(table)
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

/// Each token's bytes: none for control tokens, the text itself for user-defined ones,
/// GPT-2's byte alphabet mapped back for the rest.
pub(super) fn vocabulary_bytes(tokens: &[&str], types: &[i64]) -> Packed {
    // GPT-2's byte-to-char map uses U+0021..U+0143: invert it into a table.
    let mut char_to_byte = [None::<u8>; ALPHABET_END];
    for (b, &c) in byte_to_char().iter().enumerate() {
        if let Some(slot) = char_to_byte.get_mut(c as usize) {
            *slot = Some(b as u8);
        }
    }
    let total = tokens.iter().map(|t| t.len()).sum();
    Packed::build(tokens.len(), total, |i, out| match types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL) {
        TOKEN_TYPE_CONTROL => {}
        TOKEN_TYPE_USER_DEFINED => out.extend_from_slice(tokens[i].as_bytes()),
        _ => {
            for c in tokens[i].chars() {
                match char_to_byte.get(c as usize).copied().flatten() {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe(tokens: &[&str], merges: &[&str]) -> ByteLevelBpe {
        let types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
        ByteLevelBpe::new(pre_tokenizer("gpt2").unwrap(), tokens, &types, merges).unwrap()
    }

    fn ids(b: &ByteLevelBpe, text: &str) -> Vec<u32> {
        b.encode(text, &[], false).unwrap().0
    }

    #[test]
    fn the_lowest_rank_merges_first_and_ties_go_left() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "aa"];
        // "b c" outranks "a b": abc becomes a + bc, which has no merge.
        assert_eq!(ids(&bpe(&tokens, &["b c", "a b", "ab c"]), "abc"), [0, 4]);
        assert_eq!(ids(&bpe(&tokens, &["a b", "b c", "ab c"]), "abc"), [5]);
        // Three a's: the leftmost pair merges.
        assert_eq!(ids(&bpe(&tokens, &["a a"]), "aaa"), [6, 0]);
        // A character with no token is left out, and keeps its neighbours apart.
        assert_eq!(ids(&bpe(&tokens, &["a b"]), "azb"), [0, 1]);
        assert_eq!(ids(&bpe(&tokens, &["a b"]), "ab"), [3]);
    }

    #[test]
    fn a_repeated_pair_keeps_its_first_rank() {
        let tokens = ["a", "b", "c", "ab", "bc"];
        let b = bpe(&tokens, &["b c", "a b", "b c"]);
        assert_eq!(b.merges[&(1, 2)], (0, 4));
        assert_eq!(ids(&b, "abc"), [0, 4]);
    }

    #[test]
    fn merges_split_at_the_first_space_after_their_first_byte() {
        let tokens = [" ", "x", " x", "y"];
        let b = bpe(&tokens, &["  x"]);
        assert_eq!(b.merges[&(0, 1)], (0, 2));
        let types = [TOKEN_TYPE_NORMAL; 4];
        for bad in ["x", "", "x zz", "x y"] {
            assert!(ByteLevelBpe::new(pre_tokenizer("gpt2").unwrap(), &tokens, &types, &[bad]).is_err(), "{bad:?}");
        }
    }
}
