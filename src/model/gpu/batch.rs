//! Batches on the GPU: every sequence's cache in one buffer per layer
//! ([`GpuBatch`], the sequence's offset in each row's token info, per
//! attention window since a sliding layer's block is its own size), copies of
//! the model's passes with only the two cache kernels rebound, a sequence's
//! prefill chunks ([`GpuLlama::submit_in`]), one decode step for every row
//! ([`GpuLlama::submit_rows`]) and the shared prefix copied between sequences.

use super::buffers::{scores_bytes, storage};
use super::load::{cache_passes, n_kv_elems};
use super::{kv_params, token_info, window_cap, GpuLlama, Readback, Rows, GPU_MAX_CHUNK};
use crate::backend::webgpu::ops::Pass;
use crate::backend::webgpu::uniforms::TokenInfo;
use crate::error::{Error, Result};
use crate::kv_cache::{KvCacheConfig, KvDType, KvPolicy};

/// The GPU storage of a batch's caches (see [`GpuLlama::new_batch`]).
pub struct GpuBatch {
    pub(super) kv: KvCacheConfig,
    pub(super) seqs: usize,
    /// Elements of one sequence's block in a layer's buffer, per attention window.
    seq_elems: Vec<usize>,
    /// Each layer's buffers and the bytes of one sequence's block in them.
    kv_buffers: Vec<(wgpu::Buffer, wgpu::Buffer, usize)>,
    staging: wgpu::Buffer,
    pub(super) passes: Vec<Pass>,
    bytes: usize,
}

impl GpuBatch {
    /// Bytes of K/V storage on the GPU.
    pub fn kv_bytes(&self) -> usize {
        self.bytes
    }
    /// The cache configuration of every sequence.
    pub fn kv_config(&self) -> KvCacheConfig {
        self.kv
    }
    /// Bytes of K/V storage of one sequence.
    pub fn kv_bytes_per_sequence(&self) -> usize {
        self.bytes / self.seqs
    }
    /// Where sequence `seq`'s cache starts in the buffers of the layers of attention window `w`, in elements.
    pub(super) fn base(&self, seq: usize, w: usize) -> u32 {
        (seq * self.seq_elems[w]) as u32
    }
}

impl GpuLlama {
    /// Cache storage for a batch of `seqs` sequences, each with a cache of
    /// `kv` (the engine's storage type): one buffer per layer holding every
    /// sequence's `[n_kv, window, head_dim]` block, and copies of the passes
    /// whose cache kernels bind them.
    pub fn new_batch(&mut self, kv: KvCacheConfig, seqs: usize) -> Result<GpuBatch> {
        kv.validate()?;
        if kv.dtype != self.kv.dtype {
            return Err(Error::Unsupported("a batch on the GPU keeps its caches in the engine's cache type".into()));
        }
        if seqs == 0 || seqs > GPU_MAX_CHUNK {
            return Err(Error::InvalidOption(format!("a GPU batch holds 1 to {GPU_MAX_CHUNK} sequences")));
        }
        let (c, ctx) = (&self.cfg, &self.ctx);
        let elem = if kv.dtype == KvDType::F16 { 2 } else { 4 };
        let caps: Vec<usize> = self.windows.iter().map(|&w| window_cap(&kv, w)).collect();
        let seq_elems: Vec<usize> = caps.iter().map(|&cap| n_kv_elems(c, cap)).collect();
        let max_cap = caps.iter().copied().max().unwrap_or(kv.window);
        let scores_bytes = scores_bytes(c, max_cap);
        let layer_bytes = seqs * seq_elems.iter().max().copied().unwrap_or(0) * elem;
        if layer_bytes.max(scores_bytes) as u64 > ctx.info.max_storage_binding {
            return Err(Error::Memory(format!(
                "{seqs} sequences' {max_cap}-token caches ({} MiB per layer) exceed the GPU's largest buffer binding ({} MiB)",
                layer_bytes >> 20,
                ctx.info.max_storage_binding >> 20
            )));
        }
        let scores = storage(ctx, "batch_scores", scores_bytes);
        let mut passes = self.passes.clone();
        let mut kv_buffers = Vec::with_capacity(c.n_layer);
        let mut bytes = 0;
        for l in &self.layers {
            let seq_bytes = seq_elems[l.window] * elem;
            let kc = storage(ctx, "batch_k_cache", seqs * seq_bytes);
            let vc = storage(ctx, "batch_v_cache", seqs * seq_bytes);
            let (ri, ai) = l.passes;
            (passes[ri], passes[ai]) = cache_passes(&mut self.kernels, ctx, &self.b, l, kv_params(c, caps[l.window]), &kc, &vc, &scores)?;
            kv_buffers.push((kc, vc, seq_bytes));
            bytes += 2 * seqs * seq_bytes;
        }
        let staging = storage(ctx, "batch_copy", seq_elems.iter().max().copied().unwrap_or(0) * elem);
        Ok(GpuBatch { kv, seqs, seq_elems, kv_buffers, staging, passes, bytes })
    }

    /// Copies sequence `from`'s keys and values to sequence `to` (a shared
    /// prefix into a new sequence), through a staging buffer (WebGPU copies
    /// never read and write one buffer).
    pub fn copy_in_batch(&self, batch: &GpuBatch, from: usize, to: usize) -> Result<()> {
        self.check_submit()?;
        if from >= batch.seqs || to >= batch.seqs {
            return Err(Error::Backend("no such sequence in the GPU batch".into()));
        }
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat batch copy") });
        for (kc, vc, n) in &batch.kv_buffers {
            let n = *n as u64;
            for buf in [kc, vc] {
                enc.copy_buffer_to_buffer(buf, from as u64 * n, &batch.staging, 0, n);
                enc.copy_buffer_to_buffer(&batch.staging, 0, buf, to as u64 * n, n);
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    /// [`submit`](Self::submit) for sequence `seq` of a batch (its prefill chunks).
    pub fn submit_in(&mut self, batch: &GpuBatch, seq: usize, ids: &[u32], cache: &mut KvPolicy, readback: Readback) -> Result<()> {
        if seq >= batch.seqs || cache.config() != batch.kv {
            return Err(Error::Backend("the cache does not belong to this GPU batch".into()));
        }
        self.submit_chunk(Some((batch, seq)), ids, cache, readback, None)
    }

    /// One decode step of a batch: `rows[i] = (sequence, token)` with distinct
    /// sequences, `caches[i]` row i's cache. Every row runs through one pass
    /// (the matmuls take the rows as one matrix; each row attends over its own
    /// region of the batch's cache). [`Readback::AllLogits`] reads back every row.
    pub fn submit_rows(&mut self, batch: &GpuBatch, rows: &[(usize, u32)], caches: &mut [&mut KvPolicy], readback: Readback) -> Result<()> {
        self.check_submit()?;
        let t = rows.len();
        if t == 0 || t > GPU_MAX_CHUNK || caches.len() != t {
            return Err(Error::Backend(format!("a batch step of {t} rows does not fit the GPU plan")));
        }
        for (i, &(seq, _)) in rows.iter().enumerate() {
            if seq >= batch.seqs || rows[..i].iter().any(|r| r.0 == seq) || caches[i].config() != batch.kv {
                return Err(Error::Backend("batch rows must be distinct sequences of this GPU batch".into()));
            }
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        self.check_ids(&ids)?;
        let positions: Vec<usize> = caches.iter().map(|cache| cache.len()).collect();
        let tok: Vec<Vec<TokenInfo>> = (self.windows.iter().enumerate())
            .map(|(w, &window)| rows.iter().zip(caches.iter()).zip(&positions).map(|((&(seq, _), cache), &p)| token_info(batch.base(seq, w), cache, window, p)).collect())
            .collect();
        let rows = Rows { ids: &ids, tok: &tok, positions: &positions, sink_pos: batch.kv.window - 1 };
        self.encode(Some(batch), &rows, true, readback, 0)?;
        for (cache, id) in caches.iter_mut().zip(&ids) {
            cache.commit(&[*id]);
        }
        Ok(())
    }
}
