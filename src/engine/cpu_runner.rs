//! The [`Runner`] on the CPU: the forward pass finishes inside `submit`, and
//! `take` hands its logits over (buffers swapped, not copied).

use super::runner::{BatchKv, BatchStore, Ready, Runner, Want};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheConfig, KvPolicy, KvStats};
use crate::model::profile::Op;
use crate::model::{Llama, LlamaConfig, Profile};

/// The CPU model and the result of the last chunk it ran, waiting to be taken.
/// Also runs the batches of a GPU engine whose cache type the GPU does not hold.
pub(crate) struct CpuForward {
    pub(crate) model: Llama,
    result: Vec<f32>,
    pending: bool,
}

impl CpuForward {
    pub(crate) fn new(model: Llama) -> Self {
        Self { model, result: Vec::new(), pending: false }
    }

    fn check_idle(&self) -> Result<()> {
        if self.pending {
            return Err(Error::Backend("a result is still waiting to be taken".into()));
        }
        Ok(())
    }

    /// One chunk of one sequence.
    pub(crate) fn chunk(&mut self, cache: &mut KvCache, ids: &[u32], want: &Want) -> Result<()> {
        self.check_idle()?;
        let logits = self.model.forward(ids, cache, *want == Want::AllLogits)?;
        self.result.clear();
        if *want != Want::Nothing {
            self.result.extend_from_slice(logits);
        }
        self.pending = true;
        Ok(())
    }

    /// One token of each of `rows` (distinct sequences in increasing order) of `caches`.
    pub(crate) fn rows(&mut self, caches: &mut [KvCache], rows: &[(usize, u32)]) -> Result<()> {
        self.check_idle()?;
        if rows.is_empty() || rows.windows(2).any(|w| w[0].0 >= w[1].0) || rows.last().is_some_and(|r| r.0 >= caches.len()) {
            return Err(Error::Backend("batch rows must be distinct sequences in order".into()));
        }
        let mut selected: Vec<&mut KvCache> = caches.iter_mut().enumerate().filter(|(i, _)| rows.iter().any(|r| r.0 == *i)).map(|(_, c)| c).collect();
        let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        let logits = self.model.forward_batch(&ids, &mut selected)?;
        self.result.clear();
        self.result.extend_from_slice(logits);
        self.pending = true;
        Ok(())
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.pending
    }

    pub(crate) fn take(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>> {
        if !self.pending {
            return Err(Error::Backend("no step was submitted".into()));
        }
        self.pending = false;
        std::mem::swap(&mut self.result, logits);
        Ok(Some(Ready::Logits))
    }

    pub(crate) fn discard(&mut self) {
        self.pending = false;
    }

    /// Caches for a batch on the CPU.
    pub(crate) fn new_batch(&self, kv: KvCacheConfig, regions: usize) -> Result<BatchKv> {
        let c = self.model.config();
        let caches = (0..regions).map(|_| KvCache::new(kv, &c.windows(), c.n_head_kv, c.head_dim)).collect::<Result<Vec<_>>>()?;
        Ok(BatchKv { store: BatchStore::Cpu(caches) })
    }

    pub(crate) fn submit_in(&mut self, batch: &mut BatchKv, seq: usize, ids: &[u32], want: &Want) -> Result<()> {
        let cache = cpu_caches(batch)?.get_mut(seq).ok_or_else(no_sequence)?;
        self.chunk(cache, ids, want)
    }

    pub(crate) fn submit_rows(&mut self, batch: &mut BatchKv, rows: &[(usize, u32)]) -> Result<()> {
        self.rows(cpu_caches(batch)?, rows)
    }

    pub(crate) fn copy_in(batch: &mut BatchKv, from: usize, to: usize) -> Result<()> {
        let caches = cpu_caches(batch)?;
        if from == to || from.max(to) >= caches.len() {
            return Err(no_sequence());
        }
        let (lo, hi) = caches.split_at_mut(from.max(to));
        let (src, dst) = if from < to { (&lo[from], &mut hi[0]) } else { (&hi[0], &mut lo[to]) };
        dst.copy_from(src)
    }
}

fn no_sequence() -> Error {
    Error::Backend("no such sequence in the batch".into())
}

fn cpu_caches(batch: &mut BatchKv) -> Result<&mut Vec<KvCache>> {
    match &mut batch.store {
        BatchStore::Cpu(caches) => Ok(caches),
        BatchStore::Gpu { .. } => Err(Error::Backend("a GPU batch given to the CPU".into())),
    }
}

/// The CPU runner: the model and the engine's cache.
pub(crate) struct CpuRunner {
    forward: CpuForward,
    cache: KvCache,
}

impl CpuRunner {
    pub(crate) fn new(model: Llama, kv: KvCacheConfig) -> Result<Self> {
        let c = model.config();
        let cache = KvCache::new(kv, &c.windows(), c.n_head_kv, c.head_dim)?;
        Ok(Self { forward: CpuForward::new(model), cache })
    }
}

impl Runner for CpuRunner {
    fn backend(&self) -> &'static str {
        "cpu"
    }
    fn config(&self) -> &LlamaConfig {
        self.forward.model.config()
    }
    fn weight_bytes(&self) -> usize {
        self.forward.model.weight_bytes()
    }
    fn max_chunk(&self, wanted: usize) -> usize {
        wanted
    }
    fn policy(&self) -> &KvPolicy {
        self.cache.policy()
    }
    fn policy_mut(&mut self) -> &mut KvPolicy {
        &mut self.cache
    }
    fn kv_stats(&self) -> KvStats {
        self.cache.stats()
    }
    fn recall_map(&self) -> Vec<(usize, usize, usize)> {
        self.cache.recall_map()
    }
    fn cpu_cache(&mut self) -> Option<&mut KvCache> {
        Some(&mut self.cache)
    }
    fn submit(&mut self, ids: &[u32], want: &Want) -> Result<()> {
        self.forward.chunk(&mut self.cache, ids, want)
    }
    fn in_flight(&self) -> bool {
        self.forward.in_flight()
    }
    fn ready(&self) -> bool {
        true
    }
    fn take(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>> {
        self.forward.take(logits)
    }
    fn discard(&mut self) {
        self.forward.discard();
    }
    fn new_batch(&mut self, kv: KvCacheConfig, seqs: usize, prefix: bool) -> Result<BatchKv> {
        self.forward.new_batch(kv, seqs + prefix as usize)
    }
    fn submit_in(&mut self, batch: &mut BatchKv, seq: usize, ids: &[u32], want: &Want) -> Result<()> {
        self.forward.submit_in(batch, seq, ids, want)
    }
    fn submit_rows(&mut self, batch: &mut BatchKv, rows: &[(usize, u32)]) -> Result<()> {
        self.forward.submit_rows(batch, rows)
    }
    fn copy_in(&mut self, batch: &mut BatchKv, from: usize, to: usize) -> Result<()> {
        CpuForward::copy_in(batch, from, to)
    }
    fn recomputes_without_cache(&self) -> bool {
        true
    }
    fn set_profiling(&mut self, on: bool) {
        self.forward.model.set_profiling(on);
    }
    fn profile(&self) -> Option<&Profile> {
        self.forward.model.profile()
    }
    fn profile_add(&mut self, op: Op, secs: f64) {
        self.forward.model.profile_add(op, secs);
    }
}
