//! One interface for the forward pass on every backend: the engine and batches
//! submit a planned chunk, wait until it is ready and take its result, and
//! never ask which backend they run on. The CPU finishes inside `submit`
//! ([`CpuRunner`](super::cpu_runner::CpuRunner)); the GPU records one command
//! buffer and the browser awaits the buffer map before `take`
//! ([`GpuRunner`](super::gpu_runner::GpuRunner)).
//!
//! Protocol: every `submit` is followed by exactly one `take` (or a `discard`)
//! before the next `submit`. `submit` appends the chunk's tokens to the cache's
//! [`KvPolicy`] at once, so a lost device knows which tokens the in-flight work
//! was for (the engine's single recovery path re-runs them on the CPU).

use crate::backend::webgpu::AdapterInfo;
use crate::error::Result;
use crate::kv_cache::{KvCache, KvCacheConfig, KvPolicy, KvStats};
use crate::model::gpu::GpuBatch;
use crate::model::profile::Op;
use crate::model::{LlamaConfig, Profile};
use std::sync::Arc;

/// What a submitted chunk should produce.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Want {
    /// Nothing (a prefill chunk before the last).
    Nothing,
    /// The logits of the last token of the chunk.
    LastLogits,
    /// The logits of every token of the chunk (perplexity, tests).
    AllLogits,
    /// What the next token is chosen from: the last row's logits, or less
    /// where the backend can do the choice's first part itself.
    Next(NextChoice),
}

/// The sampler's needs for the next token (a backend may read back only the
/// greedy token or the best candidates, the repetition penalty applied).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NextChoice {
    /// Temperature 0: the greedy token is all that is needed.
    pub greedy: bool,
    /// The sampler's top-k (0: off).
    pub top_k: usize,
    /// The distinct recent ids the repetition penalty applies to, and the penalty.
    pub penalty: Option<(Vec<u32>, f32)>,
}

/// A taken result. Logits are written into the caller's buffer (reused from
/// step to step: a CPU decode step allocates nothing).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ready {
    /// Raw logits (one row, or every row for [`Want::AllLogits`]); none for [`Want::Nothing`].
    Logits,
    /// The last row with the repetition penalty already applied.
    PenalizedLogits,
    /// The greedy choice (penalty applied).
    Token(u32),
    /// The best `(id, logit)` pairs, penalty applied (enough for the sampler's top-k).
    Candidates(Vec<(u32, f32)>),
}

/// The caches of a batch: one policy per sequence (plus one region for a
/// shared prefix), with the storage where the runner keeps them.
pub struct BatchKv {
    pub(crate) store: BatchStore,
}

/// Where a batch's keys and values live.
pub(crate) enum BatchStore {
    /// A CPU cache per sequence.
    Cpu(Vec<KvCache>),
    /// One GPU buffer per layer holding every sequence's region.
    Gpu { storage: GpuBatch, policies: Vec<KvPolicy> },
}

impl BatchKv {
    /// Sequence `seq`'s bookkeeping.
    pub(crate) fn policy(&self, seq: usize) -> &KvPolicy {
        match &self.store {
            BatchStore::Cpu(caches) => caches[seq].policy(),
            BatchStore::Gpu { policies, .. } => &policies[seq],
        }
    }
    pub(crate) fn policy_mut(&mut self, seq: usize) -> &mut KvPolicy {
        match &mut self.store {
            BatchStore::Cpu(caches) => &mut caches[seq],
            BatchStore::Gpu { policies, .. } => &mut policies[seq],
        }
    }
    /// Sequence `seq`'s occupancy and the bytes of one sequence's storage.
    pub(crate) fn stats(&self, seq: usize) -> KvStats {
        match &self.store {
            BatchStore::Cpu(caches) => caches[seq].stats(),
            BatchStore::Gpu { storage, policies } => policies[seq].stats(storage.kv_bytes_per_sequence()),
        }
    }
    /// `"webgpu"` when the keys and values live on the GPU, else `"cpu"`.
    pub(crate) fn backend(&self) -> &'static str {
        match &self.store {
            BatchStore::Cpu(_) => "cpu",
            BatchStore::Gpu { .. } => "webgpu",
        }
    }
}

/// The forward pass on one backend, with the cache of the engine's own sequence.
pub(crate) trait Runner {
    /// `"cpu"` or `"webgpu"`.
    fn backend(&self) -> &'static str;
    fn config(&self) -> &LlamaConfig;
    /// Bytes of weights held by the backend.
    fn weight_bytes(&self) -> usize;
    /// The largest chunk one submit takes.
    fn max_chunk(&self, wanted: usize) -> usize;
    /// The engine's cache: its bookkeeping, its occupancy.
    fn policy(&self) -> &KvPolicy;
    fn policy_mut(&mut self) -> &mut KvPolicy;
    fn kv_stats(&self) -> KvStats;
    /// The cold blocks recalled at the last step (see `KvCache::recall_map`).
    fn recall_map(&self) -> Vec<(usize, usize, usize)> {
        Vec::new()
    }
    /// The cache itself where it lives in CPU memory (saved sessions); `None` on a GPU.
    fn cpu_cache(&mut self) -> Option<&mut KvCache> {
        None
    }

    /// Runs `ids` (planned with [`KvPolicy::next_chunk`]) through the network
    /// into the engine's cache.
    fn submit(&mut self, ids: &[u32], want: &Want) -> Result<()>;
    /// True while a submitted chunk's result has not been taken.
    fn in_flight(&self) -> bool;
    /// True once the result can be taken without blocking.
    fn ready(&self) -> bool;
    /// The submitted chunk's result; `None` while it is not ready (the browser:
    /// await [`ready`](Self::ready) and take again; native code blocks instead).
    fn take(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>>;
    /// Forgets a result nobody will take (the work still lands in its cache).
    fn discard(&mut self);

    /// Caches for a batch of `seqs` sequences (+1 region when `prefix`).
    fn new_batch(&mut self, kv: KvCacheConfig, seqs: usize, prefix: bool) -> Result<BatchKv>;
    /// [`submit`](Self::submit) into sequence `seq` of a batch.
    fn submit_in(&mut self, batch: &mut BatchKv, seq: usize, ids: &[u32], want: &Want) -> Result<()>;
    /// One decode step of a batch: `rows[i] = (sequence, token)`, distinct
    /// sequences, one pass for all rows; the result is every row's logits.
    fn submit_rows(&mut self, batch: &mut BatchKv, rows: &[(usize, u32)]) -> Result<()>;
    /// Sequence `to` becomes a copy of sequence `from` (a shared prefix).
    fn copy_in(&mut self, batch: &mut BatchKv, from: usize, to: usize) -> Result<()>;

    /// Whether `no_cache` generation (the whole sequence recomputed at every
    /// token, a benchmark of what the cache saves) is offered.
    fn recomputes_without_cache(&self) -> bool {
        false
    }
    /// The file's bytes, kept where the engine may have to reload the weights
    /// on the CPU (a GPU runner: the device can be lost).
    fn model_bytes(&self) -> Option<Arc<Vec<u8>>> {
        None
    }
    /// The GPU adapter, on a GPU.
    fn adapter(&self) -> Option<&AdapterInfo> {
        None
    }
    /// Dispatches and bytes read back by the last GPU step.
    fn step_costs(&self) -> Option<(usize, usize)> {
        None
    }
    /// Destroys the GPU device (tests of the device-lost recovery).
    fn lose_device(&self) {}
    /// Per-operation timing (the CPU forward pass).
    fn set_profiling(&mut self, _on: bool) {}
    fn profile(&self) -> Option<&Profile> {
        None
    }
    fn profile_add(&mut self, _op: Op, _secs: f64) {}
}
