//! The [`Runner`] on WebGPU: `submit` records one command buffer and starts
//! mapping its result; `take` collects it (native code blocks in `wait`, the
//! browser awaits [`Runner::ready`] between steps). The sampler's choice
//! decides how much comes back: 8 bytes for a greedy token, the 64 best
//! logits for a small top-k, else the row.

use super::cpu_runner::CpuForward;
use super::runner::{BatchKv, BatchStore, NextChoice, Ready, Runner, Want};
use crate::backend::webgpu::AdapterInfo;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCacheConfig, KvPolicy, KvStats};
use crate::model::gpu::{GpuOutput, Readback, GPU_MAX_CHUNK, GPU_MAX_PENALTY_IDS, GPU_TOP_K};
use crate::model::{GpuLlama, Llama, LlamaConfig};
use candle_core::Device;
use std::sync::Arc;

/// The GPU model, the engine's cache policy (its keys and values are in the
/// model's GPU buffers) and the file's bytes (the engine reloads the weights
/// on the CPU if the device is lost).
pub(crate) struct GpuRunner {
    model: GpuLlama,
    policy: KvPolicy,
    bytes: Arc<Vec<u8>>,
    /// Batches whose cache type the GPU does not hold run on CPU weights, loaded on first use.
    cpu: Option<CpuForward>,
}

impl GpuRunner {
    pub(crate) fn new(model: GpuLlama, bytes: Arc<Vec<u8>>) -> Result<Self> {
        let policy = KvPolicy::for_layers(model.kv_config(), &model.config().windows())?;
        Ok(Self { model, policy, bytes, cpu: None })
    }

    /// What to read back for a chunk's `want` (and the penalty to apply first).
    fn readback(want: &Want) -> (Readback, Option<(&[u32], f32)>) {
        match want {
            Want::Nothing => (Readback::Argmax, None),
            Want::LastLogits => (Readback::LastLogits, None),
            Want::AllLogits => (Readback::AllLogits, None),
            Want::Next(NextChoice { greedy, top_k, penalty }) => {
                let penalty_fits = penalty.as_ref().is_none_or(|(ids, _)| ids.len() <= GPU_MAX_PENALTY_IDS);
                let penalty = penalty.as_ref().map(|(ids, p)| (&ids[..], *p));
                if penalty_fits && *greedy {
                    (Readback::Argmax, penalty)
                } else if penalty_fits && *top_k > 0 && *top_k <= GPU_TOP_K {
                    (Readback::TopK, penalty)
                } else {
                    (Readback::LastLogits, None)
                }
            }
        }
    }

    /// The CPU weights for batches in another cache type.
    fn cpu(&mut self) -> Result<&mut CpuForward> {
        if self.cpu.is_none() {
            let g = Gguf::parse(&self.bytes)?;
            self.cpu = Some(CpuForward::new(Llama::load(&g, self.model.config().clone(), &Device::Cpu)?));
        }
        Ok(self.cpu.as_mut().expect("loaded above"))
    }

    /// Waits (natively) or polls (browser) for the GPU's result.
    fn take_gpu(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>> {
        let m = &mut self.model;
        loop {
            if !m.ready() {
                m.wait()?;
                m.poll();
                if !m.ready() {
                    return Ok(None);
                }
            }
            // None: the top-k could not prove it had every candidate; the whole row is on its way.
            let Some(out) = m.take()? else { continue };
            return Ok(Some(match out {
                GpuOutput::Token(t) => Ready::Token(t),
                GpuOutput::Candidates(c) => Ready::Candidates(c),
                GpuOutput::Logits(l) => {
                    *logits = l;
                    Ready::Logits
                }
                GpuOutput::PenalizedLogits(l) => {
                    *logits = l;
                    Ready::PenalizedLogits
                }
            }));
        }
    }
}

impl Runner for GpuRunner {
    fn backend(&self) -> &'static str {
        "webgpu"
    }
    fn config(&self) -> &LlamaConfig {
        self.model.config()
    }
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }
    fn max_chunk(&self, wanted: usize) -> usize {
        wanted.min(GPU_MAX_CHUNK)
    }
    fn policy(&self) -> &KvPolicy {
        &self.policy
    }
    fn policy_mut(&mut self) -> &mut KvPolicy {
        &mut self.policy
    }
    fn kv_stats(&self) -> KvStats {
        self.model.kv_stats(&self.policy)
    }
    fn submit(&mut self, ids: &[u32], want: &Want) -> Result<()> {
        let (readback, penalty) = Self::readback(want);
        self.model.submit(ids, &mut self.policy, readback, penalty)
    }
    fn in_flight(&self) -> bool {
        self.model.in_flight() || self.cpu.as_ref().is_some_and(CpuForward::in_flight)
    }
    fn ready(&self) -> bool {
        self.model.poll();
        self.model.ready()
    }
    fn take(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>> {
        match &mut self.cpu {
            Some(cpu) if cpu.in_flight() => cpu.take(logits),
            _ => self.take_gpu(logits),
        }
    }
    fn discard(&mut self) {
        self.model.discard();
        if let Some(cpu) = &mut self.cpu {
            cpu.discard();
        }
    }
    fn new_batch(&mut self, kv: KvCacheConfig, seqs: usize, prefix: bool) -> Result<BatchKv> {
        let regions = seqs + prefix as usize;
        if kv.dtype != self.model.kv_config().dtype {
            return self.cpu()?.new_batch(kv, regions);
        }
        let storage = self.model.new_batch(kv, regions)?;
        let windows = self.model.config().windows();
        let policies = (0..regions).map(|_| KvPolicy::for_layers(kv, &windows)).collect::<Result<Vec<_>>>()?;
        Ok(BatchKv { store: BatchStore::Gpu { storage, policies } })
    }
    fn submit_in(&mut self, batch: &mut BatchKv, seq: usize, ids: &[u32], want: &Want) -> Result<()> {
        match &mut batch.store {
            BatchStore::Gpu { storage, policies } => {
                let policy = policies.get_mut(seq).ok_or_else(|| Error::Backend("no such sequence in the batch".into()))?;
                let readback = if *want == Want::Nothing { Readback::Argmax } else { Readback::LastLogits };
                self.model.submit_in(storage, seq, ids, policy, readback)
            }
            BatchStore::Cpu(_) => self.cpu()?.submit_in(batch, seq, ids, want),
        }
    }
    fn submit_rows(&mut self, batch: &mut BatchKv, rows: &[(usize, u32)]) -> Result<()> {
        match &mut batch.store {
            BatchStore::Gpu { storage, policies } => {
                if rows.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(Error::Backend("batch rows must be distinct sequences in order".into()));
                }
                let mut selected: Vec<&mut KvPolicy> = policies.iter_mut().enumerate().filter(|(i, _)| rows.iter().any(|r| r.0 == *i)).map(|(_, p)| p).collect();
                self.model.submit_rows(storage, rows, &mut selected, Readback::AllLogits)
            }
            BatchStore::Cpu(_) => self.cpu()?.submit_rows(batch, rows),
        }
    }
    fn copy_in(&mut self, batch: &mut BatchKv, from: usize, to: usize) -> Result<()> {
        match &mut batch.store {
            BatchStore::Gpu { storage, policies } => {
                self.model.copy_in_batch(storage, from, to)?;
                let src = policies[from].clone();
                policies[to].copy_from(&src)
            }
            BatchStore::Cpu(_) => CpuForward::copy_in(batch, from, to),
        }
    }
    fn model_bytes(&self) -> Option<Arc<Vec<u8>>> {
        Some(self.bytes.clone())
    }
    fn adapter(&self) -> Option<&AdapterInfo> {
        Some(&self.model.context().info)
    }
    fn step_costs(&self) -> Option<(usize, usize)> {
        Some((self.model.last_dispatches, self.model.last_readback_bytes))
    }
    fn lose_device(&self) {
        self.model.context().destroy();
    }
}
