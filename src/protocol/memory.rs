//! `KvEngine.memoryView()` / the `memory` request: the cache's history piece by
//! piece with where each token's keys and values live ([`engine::MemoryView`]).

use super::*;

/// Where a token's keys and values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum TokenTier {
    /// One of the first tokens, kept for good.
    Sink,
    /// Left the window and is gone.
    Dropped,
    /// In the cold tier, compressed, recalled on need.
    Cold,
    /// Left the window into the cold tier's open block (recallable once the block is full).
    Pending,
    /// In the window.
    Window,
}

impl From<kv_cache::TokenTier> for TokenTier {
    fn from(t: kv_cache::TokenTier) -> Self {
        match t {
            kv_cache::TokenTier::Sink => TokenTier::Sink,
            kv_cache::TokenTier::Dropped => TokenTier::Dropped,
            kv_cache::TokenTier::Cold => TokenTier::Cold,
            kv_cache::TokenTier::Pending => TokenTier::Pending,
            kv_cache::TokenTier::Window => TokenTier::Window,
        }
    }
}

/// The cache's history: `pieces[i]` is the text token `i` adds (a control token's
/// own text; empty while a character is split across tokens), `tiers[i]` where its
/// keys and values live; the cold blocks the last step recalled.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct MemoryView {
    pub pieces: Vec<String>,
    pub tiers: Vec<TokenTier>,
    pub recalled: Vec<RecalledBlock>,
}

impl From<engine::MemoryView> for MemoryView {
    fn from(m: engine::MemoryView) -> Self {
        let engine::MemoryView { tokens, recalled } = m;
        let (pieces, tiers) = tokens.into_iter().map(|(piece, tier)| (piece, TokenTier::from(tier))).unzip();
        MemoryView { pieces, tiers, recalled: recalled.into_iter().map(RecalledBlock::from).collect() }
    }
}
