//! The tokens matched whole in the text before the vocabulary's own encoder runs
//! (llama.cpp's `parse_special = true`): the longest at a position wins, and the
//! text between two of them is encoded on its own.

use crate::error::{Error, Result};
use aho_corasick::{AhoCorasick, MatchKind};

pub(super) struct SpecialTokens {
    matcher: AhoCorasick,
    /// The id of each pattern of `matcher`.
    ids: Vec<u32>,
}

impl SpecialTokens {
    /// The tokens whose type `matched` accepts (empty texts never match); `None` when there are none.
    pub(super) fn new(tokens: &[&str], types: &[i64], matched: impl Fn(i64) -> bool) -> Result<Option<Self>> {
        let (texts, ids): (Vec<&str>, Vec<u32>) = tokens
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (t, &ty))| matched(ty) && !t.is_empty())
            .map(|(i, (t, _))| (*t, i as u32))
            .unzip();
        if texts.is_empty() {
            return Ok(None);
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&texts)
            .map_err(|e| Error::Tokenizer(format!("cannot match the special tokens: {e}")))?;
        Ok(Some(Self { matcher, ids }))
    }
}

/// `text`'s ids: the matched tokens as themselves, each stretch between them through
/// `encode_fragment`; with `boundaries`, also (end byte, ids so far) after every token
/// that `special` marks.
pub(super) fn encode_around(
    specials: Option<&SpecialTokens>,
    text: &str,
    special: &[bool],
    boundaries: bool,
    mut encode_fragment: impl FnMut(&str, &mut Vec<u32>) -> Result<()>,
) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
    let mut ids = Vec::new();
    let mut ends = Vec::new();
    let mut start = 0;
    if let Some(s) = specials {
        for m in s.matcher.find_iter(text) {
            if m.start() > start {
                encode_fragment(&text[start..m.start()], &mut ids)?;
            }
            let id = s.ids.get(m.pattern().as_usize()).copied().ok_or_else(|| Error::Tokenizer("special token pattern out of range".into()))?;
            ids.push(id);
            if boundaries && special.get(id as usize).copied().unwrap_or(false) {
                ends.push((m.end(), ids.len()));
            }
            start = m.end();
        }
    }
    if start < text.len() {
        encode_fragment(&text[start..], &mut ids)?;
    }
    Ok((ids, ends))
}
