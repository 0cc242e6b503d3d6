//! Collecting a step's result: the readback buffer is mapped asynchronously
//! (the browser maps only from its event loop), polled with
//! [`GpuLlama::ready`], waited for natively with [`GpuLlama::wait`] and
//! decoded by [`GpuLlama::take`]. A top-k selection that cannot prove it is
//! complete falls back to reading the whole penalized row.

use super::{GpuLlama, GpuOutput, Readback, GPU_TOP_K};
use crate::error::{Error, Result};
use crate::kv_cache::KvPolicy;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A submitted step whose result has not been taken.
pub(super) struct Pending {
    /// 0 waiting, 1 mapped, 2 failed.
    state: Arc<AtomicU8>,
    readback: Readback,
    rows: usize,
    /// The logits read back had the penalty applied on the GPU.
    penalized: bool,
}

/// The result in `words` (the mapped bytes); `None` when the top-k selection overflowed.
fn decode(p: &Pending, words: &[u32]) -> Option<GpuOutput> {
    match p.readback {
        Readback::Argmax => Some(GpuOutput::Token(words[0])),
        Readback::TopK if words[1] != 0 => None,
        Readback::TopK => {
            let n = (words[0] as usize).min(GPU_TOP_K);
            Some(GpuOutput::Candidates((0..n).map(|k| (words[2 + 2 * k], f32::from_bits(words[3 + 2 * k]))).collect()))
        }
        _ if p.penalized => Some(GpuOutput::PenalizedLogits(bytemuck::cast_slice::<u32, f32>(words).to_vec())),
        _ => Some(GpuOutput::Logits(bytemuck::cast_slice::<u32, f32>(words).to_vec())),
    }
}

impl GpuLlama {
    fn readback_bytes(&self, readback: Readback, rows: usize) -> usize {
        match readback {
            Readback::Argmax => 8,
            Readback::TopK => (2 + 2 * GPU_TOP_K) * 4,
            _ => rows * self.cfg.vocab_size * 4,
        }
    }

    /// Starts mapping the readback buffer for a step's result.
    pub(super) fn map(&mut self, readback: Readback, rows: usize, penalized: bool) {
        let bytes = self.readback_bytes(readback, rows);
        self.last_readback_bytes = bytes;
        let state = Arc::new(AtomicU8::new(0));
        let st = state.clone();
        self.b.readback.slice(..bytes as u64).map_async(wgpu::MapMode::Read, move |r| st.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst));
        self.pending = Some(Pending { state, readback, rows, penalized });
    }

    /// True once the submitted step's result can be taken without waiting.
    pub fn ready(&self) -> bool {
        match &self.pending {
            Some(p) => p.state.load(Ordering::SeqCst) != 0 || self.ctx.is_lost(),
            None => true,
        }
    }

    /// Blocks until the submitted step has finished (native only; in the
    /// browser the map callback fires from the event loop).
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.pending.is_some() {
            self.ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        }
        Ok(())
    }

    /// Lets wgpu run map callbacks without blocking.
    pub fn poll(&self) {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
    }

    /// The submitted step's result; [`Error::Gpu`] if it is not ready yet.
    /// `None` when the top-k selection could not prove it was complete: the
    /// whole row is being read back instead (wait for it and take again).
    pub fn take(&mut self) -> Result<Option<GpuOutput>> {
        let Some(p) = self.pending.as_ref() else {
            return Err(Error::Backend("no GPU step was submitted".into()));
        };
        if self.ctx.is_lost() {
            self.pending = None;
            return Err(self.ctx.lost_error());
        }
        match p.state.load(Ordering::SeqCst) {
            0 => return Err(Error::Gpu("the GPU step has not finished yet".into())),
            2 => {
                self.pending = None;
                // Mapping fails when the device is gone (its lost callback may come later).
                return Err(if self.ctx.is_lost() { self.ctx.lost_error() } else { Error::DeviceLost("reading the GPU result failed".into()) });
            }
            _ => {}
        }
        let p = self.pending.take().expect("checked above");
        let out = {
            let bytes = self.readback_bytes(p.readback, p.rows);
            let view = self.b.readback.slice(..bytes as u64).get_mapped_range().map_err(|e| Error::Gpu(format!("reading the GPU result: {e}")))?;
            decode(&p, bytemuck::cast_slice(&view))
        };
        self.b.readback.unmap();
        if out.is_none() {
            // The penalized row is still in the logits buffer: read all of it.
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat logits") });
            enc.copy_buffer_to_buffer(&self.b.logits, 0, &self.b.readback, 0, (self.cfg.vocab_size * 4) as u64);
            self.ctx.queue.submit([enc.finish()]);
            self.map(Readback::LastLogits, 1, true);
        }
        Ok(out)
    }

    /// Submit, wait and take in one call (native code and tests).
    pub fn run(&mut self, ids: &[u32], cache: &mut KvPolicy, readback: Readback, penalty: Option<(&[u32], f32)>) -> Result<GpuOutput> {
        self.submit(ids, cache, readback, penalty)?;
        loop {
            self.wait()?;
            if let Some(out) = self.take()? {
                return Ok(out);
            }
        }
    }

    /// Forgets a step in flight (after an error, so the next one can start).
    pub fn discard(&mut self) {
        if self.pending.take().is_some() {
            self.b.readback.unmap();
        }
    }
}
