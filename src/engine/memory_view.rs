//! What the cache holds, token by token: the conversation's text pieces and
//! where each token's keys and values live (sink, window, cold tier, dropped),
//! with the cold blocks the last step recalled. The page draws its chat log
//! from this to show the cold tier at work.

use super::Engine;
use crate::kv_cache::TokenTier;
use crate::tokenizer::StreamDecoder;

/// The cache's history as text pieces with their tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryView {
    /// One entry per position: the text the token adds (a control token's own
    /// text; empty while a UTF-8 character is split across tokens, whose last
    /// token carries it; a control token inside a split character ends it as
    /// U+FFFD) and where its keys and values live.
    pub tokens: Vec<(String, TokenTier)>,
    /// The cold blocks the last step recalled: `(first position, tokens, (layer, kv head) pairs)`.
    pub recalled: Vec<(usize, usize, usize)>,
}

impl Engine {
    /// The cache's history, piece by piece, with where each token lives now.
    pub fn memory_view(&self) -> MemoryView {
        let kv = self.kv_stats();
        let tokenizer = self.tokenizer();
        let mut decoder = StreamDecoder::new();
        let mut tokens = self
            .cached_tokens()
            .iter()
            .enumerate()
            .map(|(p, &id)| {
                let piece = if tokenizer.is_special(id) {
                    decoder.finish() + tokenizer.token_text(id).unwrap_or_default()
                } else {
                    decoder.push(tokenizer, id)
                };
                (piece, kv.tier(p))
            })
            .collect::<Vec<_>>();
        // A character still split when the history ends (a stop mid-character) shows as U+FFFD, as `decode` does.
        if let Some(last) = tokens.last_mut() {
            last.0.push_str(&decoder.finish());
        }
        MemoryView { tokens, recalled: self.recall_map() }
    }
}
