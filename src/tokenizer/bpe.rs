//! Byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`), encoded by the
//! `tokenizers` crate with the pre-tokenizer that `tokenizer.ggml.pre` names.

use super::{tok_err, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`): llama 3's, with digits one at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The BPE tokenizer of a `gpt2` vocabulary: merges, pre-tokenizer, and control and
/// user-defined tokens split out first.
pub(super) fn build(g: &Gguf, tokens: &[&str], types: &[i64]) -> Result<tokenizers::Tokenizer> {
    let merges = read_merges(g)?;
    let pre = match g.metadata("tokenizer.ggml.pre") {
        Some(_) => g.get_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let bpe = build_bpe(tokens, merges)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.add_special_tokens(added_tokens(tokens, types)).map_err(tok_err)?;
    Ok(inner)
}

/// `text`'s ids and, with `boundaries`, (end byte, ids so far) after every special token.
pub(super) fn encode(t: &tokenizers::Tokenizer, text: &str, special: &[bool], boundaries: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
    if !boundaries {
        return Ok((t.encode_fast(text, false).map_err(tok_err)?.get_ids().to_vec(), Vec::new()));
    }
    let enc = t.encode(text, false).map_err(tok_err)?;
    let ends = enc
        .get_ids()
        .iter()
        .zip(enc.get_offsets())
        .enumerate()
        .filter(|(_, (&id, _))| special.get(id as usize).copied().unwrap_or(false))
        .map(|(i, (_, &(_, end)))| (end, i + 1))
        .collect();
    Ok((enc.get_ids().to_vec(), ends))
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
pub(super) fn vocabulary_bytes(tokens: &[&str], types: &[i64]) -> Vec<Vec<u8>> {
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
