//! The bounded KV cache: the heart of kvchat. Split by concept:
//!
//! * [`policy`]: the bookkeeping every backend plans with (the token ids held,
//!   the ring with attention sinks, eviction, prefix reuse, and the one
//!   [`PositionPlan`] rule for where a token goes and what its query sees);
//! * [`storage`]: the CPU's preallocated K/V buffers (f32 or f16) and one
//!   token's attention read from them in place;
//! * [`cold`]: the compressed tier behind the window (8 or 4 bits, blocks
//!   with key summaries) and the recall of the blocks a query needs;
//!   [`cold_block`] one block's codes; [`recalled`] the recalled keys and
//!   values of the layer being computed;
//! * [`KvCache`]: the two together, the cache of a CPU forward pass. The GPU
//!   keeps its keys and values in GPU buffers (`model::gpu`) and plans with a
//!   bare [`KvPolicy`].
//!
//! Memory is allocated once and never grows (see ARCHITECTURE.md for the ring,
//! the sinks and why keys are cached rotated at their absolute position).

pub mod cold;
pub mod cold_block;
pub mod image;
pub mod policy;
pub mod recalled;
pub mod storage;

pub use cold::{ColdBits, ColdConfig, ColdStats};
pub use policy::{KvPolicy, PositionPlan};
pub use recalled::RecallRope;
pub use storage::{AttnScratch, ColdRotations, KvStorage, Unrotate};

use crate::error::{Error, Result};

/// Element type of the stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDType {
    F32,
    F16,
}

impl KvDType {
    pub fn size(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::F16 => 2,
        }
    }
}

/// The keys a layer's query attends over: the model says which kind each
/// layer is, and the cache keeps a store of the matching size per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionWindow {
    /// Every key the cache holds: the configured window with its sinks.
    Global,
    /// Only the last `n` positions (Gemma 3's local layers): a ring of exactly
    /// `n`, whatever the configured window, never more than the layer reads.
    Sliding(usize),
}

/// How big the cache is and how it evicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCacheConfig {
    /// Capacity in tokens (sinks included).
    pub window: usize,
    /// Leading tokens that are never evicted.
    pub sinks: usize,
    pub dtype: KvDType,
    /// The compressed tier the global layers' evicted tokens go to (none: they are dropped).
    pub cold: Option<ColdConfig>,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self { window: 2048, sinks: 4, dtype: KvDType::F32, cold: None }
    }
}

impl KvCacheConfig {
    /// Bytes one token costs across all layers (K and V) of a uniform cache.
    pub fn bytes_per_token(&self, n_layer: usize, kv_dim: usize) -> usize {
        2 * n_layer * kv_dim * self.dtype.size()
    }

    /// Bytes a cache of this window takes for layers attending over `windows`
    /// (sliding layers hold their own window, the others this one).
    pub fn bytes_for(&self, windows: &[AttentionWindow], kv_dim: usize) -> u128 {
        let slot = 2 * kv_dim as u128 * self.dtype.size() as u128;
        windows.iter().map(|w| slot * (if let AttentionWindow::Sliding(n) = w { *n } else { self.window }) as u128).sum()
    }

    /// Bytes of the cold tier and the recalled rows (f32, every global
    /// layer's), for layers attending over `windows`.
    pub fn cold_bytes_for(&self, windows: &[AttentionWindow], n_kv: usize, head_dim: usize) -> u128 {
        let Some(c) = self.cold else { return 0 };
        let global = windows.iter().filter(|w| **w == AttentionWindow::Global).count() as u128;
        if global == 0 {
            return 0;
        }
        let recalled_rows = (2 * n_kv * head_dim * std::mem::size_of::<f32>() * c.recall_rows()) as u128;
        global * (c.layer_bytes(n_kv, head_dim) as u128 + recalled_rows)
    }

    /// The largest window whose cache fits `budget` bytes (the sliding layers' rings counted first).
    pub fn window_for_budget(budget: usize, windows: &[AttentionWindow], kv_dim: usize, dtype: KvDType) -> usize {
        let slot = 2 * kv_dim * dtype.size();
        let local: usize = windows.iter().map(|w| if let AttentionWindow::Sliding(n) = w { n * slot } else { 0 }).sum();
        let global = windows.iter().filter(|w| **w == AttentionWindow::Global).count();
        budget.saturating_sub(local) / (global * slot).max(1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::InvalidOption("kv window must be at least 1 token".into()));
        }
        if self.sinks >= self.window {
            return Err(Error::InvalidOption(format!(
                "kv window ({}) must be larger than the number of sink tokens ({})",
                self.window, self.sinks
            )));
        }
        if let Some(cold) = &self.cold {
            cold.validate()?;
        }
        Ok(())
    }
}

/// A snapshot of the cache's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub capacity: usize,
    pub used: usize,
    pub sinks: usize,
    pub evicted: usize,
    /// Every layer's K/V storage (`global_bytes + local_bytes`).
    pub bytes: usize,
    /// The layers that attend over the whole window.
    pub global_bytes: usize,
    /// The sliding-window layers (0 for models without).
    pub local_bytes: usize,
    /// The sliding layers' window (0 for models without).
    pub local_window: usize,
    /// The compressed tier behind the window (none when not configured).
    pub cold: Option<ColdStats>,
}

/// Where the keys and values of a position in the conversation live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TokenTier {
    /// One of the first tokens, kept for good (attention sinks).
    Sink,
    /// Left the window and is gone: no cold tier, or past the cold tier's capacity.
    Dropped,
    /// In the cold tier, compressed: recalled when a query scores its block high.
    Cold,
    /// Left the window into the cold tier's open block, compressed (and recallable) once the block is full.
    Pending,
    /// In the window, attended at every step.
    Window,
}

impl KvStats {
    /// Where position `p` (below `used + evicted`, the conversation's length) lives, for the
    /// cache's full-window layers (a model's sliding layers keep less).
    pub fn tier(&self, p: usize) -> TokenTier {
        let left = self.sinks + self.evicted;
        if p < self.sinks {
            return TokenTier::Sink;
        }
        if p >= left {
            return TokenTier::Window;
        }
        match self.cold {
            None => TokenTier::Dropped,
            Some(c) if p < self.sinks + c.evicted => TokenTier::Dropped,
            Some(c) if p < self.sinks + c.evicted + c.used => TokenTier::Cold,
            Some(_) => TokenTier::Pending,
        }
    }
}

/// A CPU cache: the policy and the storage it plans for (each layer's store
/// sized by its [`AttentionWindow`]). Dereferences to its
/// [`KvPolicy`] (lengths, tokens, planning, prefix reuse).
pub struct KvCache {
    policy: KvPolicy,
    storage: KvStorage,
}

impl KvCache {
    /// A cache for layers attending over `windows` (one per layer).
    pub fn new(cfg: KvCacheConfig, windows: &[AttentionWindow], n_kv: usize, head_dim: usize) -> Result<Self> {
        Ok(Self { policy: KvPolicy::for_layers(cfg, windows)?, storage: KvStorage::new(cfg, windows, n_kv, head_dim)? })
    }

    /// A cache whose layers all attend over the whole window.
    pub fn uniform(cfg: KvCacheConfig, n_layer: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        Self::new(cfg, &vec![AttentionWindow::Global; n_layer], n_kv, head_dim)
    }

    pub fn policy(&self) -> &KvPolicy {
        &self.policy
    }

    /// Bytes held by the preallocated K/V storage.
    pub fn bytes(&self) -> usize {
        self.storage.bytes()
    }

    pub fn stats(&self) -> KvStats {
        let (global, local) = self.storage.bytes_by_kind();
        let cold = self.storage.cold_stats(self.policy.len());
        let cold_bytes = cold.map_or(0, |c| c.bytes);
        KvStats { global_bytes: global, local_bytes: local, cold, ..self.policy.stats(global + local + cold_bytes) }
    }

    /// Makes this cache a copy of `other` (same configuration, nothing evicted
    /// yet): its tokens and the keys and values of the slots in use. Batches
    /// prefill a shared prompt prefix once and start each sequence from a copy.
    pub fn copy_from(&mut self, other: &KvCache) -> Result<()> {
        self.policy.copy_from(&other.policy)?;
        self.storage.copy_slots_from(&other.storage, other.policy.len())
    }

    /// Attention of one layer for the token placed by `plan` (from
    /// [`KvPolicy::plan`]; the tokens of a chunk are fed in order; call
    /// [`commit`](KvPolicy::commit) after the last layer). See [`KvStorage::attend`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend(&mut self, layer: usize, plan: PositionPlan, q: &[f32], q_sink: &[f32], k: &[f32], v: &[f32], cold: Option<&ColdRotations>, scratch: &mut AttnScratch, out: &mut [f32]) {
        self.storage.attend(layer, plan, q, q_sink, k, v, cold, scratch, out);
    }

    /// The whole cache as a saved-session image, tagged with the model's
    /// `fingerprint` (see [`image`]).
    pub fn save_image(&self, fingerprint: u64) -> Vec<u8> {
        let mut w = image::ImageWriter::default();
        image::write_header(&mut w, fingerprint, &self.policy.config(), self.policy.tokens());
        self.storage.write_image(&mut w, self.policy.len());
        image::finish(w)
    }

    /// Makes this cache the one `bytes` holds (saved by [`save_image`](Self::save_image)
    /// for the same model and configuration). A file that is not one, is
    /// corrupt, or was saved for another model or configuration is an
    /// [`Error::Session`] and changes nothing; one that passes those checks
    /// and is still inconsistent leaves the cache empty.
    pub fn restore_image(&mut self, bytes: &[u8], fingerprint: u64) -> Result<()> {
        let (tokens, mut r) = image::read_header(bytes, fingerprint, &self.policy.config(), bytes.len() / 4)?;
        self.policy.reset();
        let read = self.storage.read_image(&mut r, tokens.len()).and_then(|_| image::check_end(&r));
        if let Err(e) = read {
            self.storage.forget_recalls();
            return Err(e);
        }
        self.policy.commit(&tokens);
        Ok(())
    }

    /// The cold blocks recalled at the last step: `(first position, tokens,
    /// number of (layer, kv head) pairs holding it)`, by position.
    pub fn recall_map(&self) -> Vec<(usize, usize, usize)> {
        let sinks = self.policy.sinks();
        self.storage.recall_map().into_iter().map(|(id, n)| (sinks + id * cold::BLOCK, cold::BLOCK, n)).collect()
    }

    /// Empties every recall slot (the cache was emptied: nothing was recalled for it).
    pub fn forget_recalls(&mut self) {
        self.storage.forget_recalls();
    }

    /// Whether evicted tokens go to a cold tier (the forward pass then hands
    /// over un-rotated queries and the rotations [`recall`](Self::recall) and
    /// [`attend`](Self::attend) need).
    pub fn has_cold(&self) -> bool {
        self.policy.config().cold.is_some()
    }

    /// Brings back into layer `layer`'s recall rows the cold blocks that the
    /// `queries` (un-rotated, `[t][qd]`) of the tokens from absolute position
    /// `position` on need; call before the first of them is attended in that
    /// layer. See [`KvStorage::recall`].
    pub fn recall(&mut self, layer: usize, position: usize, queries: &[f32], qd: usize, rope: &RecallRope) {
        self.storage.recall(layer, position, queries, qd, rope);
    }
}

impl std::ops::Deref for KvCache {
    type Target = KvPolicy;
    fn deref(&self) -> &KvPolicy {
        &self.policy
    }
}

impl std::ops::DerefMut for KvCache {
    fn deref_mut(&mut self) -> &mut KvPolicy {
        &mut self.policy
    }
}
