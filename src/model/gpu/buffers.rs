//! The GPU buffers of one forward pass besides weights and caches: the step's
//! inputs (uniforms, ids, token infos, angles), the activations, sized once
//! for [`GPU_MAX_CHUNK`] tokens, and the result and readback buffers.

use super::{GPU_MAX_CHUNK, GPU_MAX_PENALTY_IDS, GPU_TOP_K};
use crate::backend::cpu::quant::QK;
use crate::backend::webgpu::uniforms::{PenaltyParams, Step, Uniform};
use crate::backend::webgpu::GpuContext;
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use wgpu::util::DeviceExt;

/// A storage buffer of at least `bytes` (16 at least: WebGPU refuses empty bindings).
pub(super) fn storage(ctx: &GpuContext, label: &str, bytes: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A read-only storage buffer holding `v`.
pub(super) fn f32_buffer(ctx: &GpuContext, label: &str, v: &[f32]) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytemuck::cast_slice(v), usage: wgpu::BufferUsages::STORAGE })
}

/// Bytes of the attention scores scratch for a window of `cap` slots.
pub(super) fn scores_bytes(c: &LlamaConfig, cap: usize) -> usize {
    GPU_MAX_CHUNK * c.n_head * cap * 4
}

/// Shapes are per token `t < GPU_MAX_CHUNK`; `qd = n_head * head_dim`, `kvd = n_head_kv * head_dim`.
pub(super) struct Buffers {
    pub step: Uniform<Step>,
    /// `[t]` token ids.
    pub ids: wgpu::Buffer,
    /// `[t]` TokenInfo, one buffer per attention window.
    pub tok: Vec<wgpu::Buffer>,
    /// `[1 + t, head_dim]` RoPE cosines and sines, one buffer per RoPE table.
    pub cs: Vec<wgpu::Buffer>,
    /// `[t, n_embd]` the residual stream.
    pub x: wgpu::Buffer,
    /// `[t, n_embd]` a block's output before its post-norm.
    pub o: wgpu::Buffer,
    /// `[t, qd + 2 kvd]`.
    pub qkv: wgpu::Buffer,
    /// `[t, qd]` rotated queries, and rotated at the sink query position.
    pub q: wgpu::Buffer,
    pub q_sink: wgpu::Buffer,
    /// `[t, qd]` attention output.
    pub attn: wgpu::Buffer,
    /// `[t, 2 n_ff]` gate then up.
    pub gu: wgpu::Buffer,
    /// Quantized activations of the widest matmul input: quants and scales.
    pub aq: wgpu::Buffer,
    pub asc: wgpu::Buffer,
    /// `[t, n_head, window]` attention scratch.
    pub scores: wgpu::Buffer,
    /// `[t, vocab]`.
    pub logits: wgpu::Buffer,
    /// argmax's or top-k's result.
    pub result: wgpu::Buffer,
    pub penalty_ids: wgpu::Buffer,
    pub penalty: Uniform<PenaltyParams>,
    /// Mappable: what a step reads back.
    pub readback: wgpu::Buffer,
}

impl Buffers {
    /// The buffers of a model `c` whose largest cache has `cap` slots, with
    /// `windows` attention windows and `tables` RoPE tables.
    pub fn new(ctx: &GpuContext, c: &LlamaConfig, cap: usize, windows: usize, tables: usize) -> Result<Self> {
        let tmax = GPU_MAX_CHUNK;
        let (e, hd, ff, vocab) = (c.n_embd, c.head_dim, c.n_ff, c.vocab_size);
        let (qd, kvd) = (c.n_head * hd, c.n_head_kv * hd);
        let widest = e.max(ff).max(qd);
        let scores = scores_bytes(c, cap);
        if scores as u64 > ctx.info.max_storage_binding {
            return Err(Error::Memory(format!("attention scratch for a {cap}-token window exceeds the GPU's largest buffer binding")));
        }
        Ok(Self {
            step: Uniform::new(ctx, "step", &Step::default()),
            ids: storage(ctx, "ids", tmax * 4),
            tok: (0..windows).map(|_| storage(ctx, "tok", tmax * 16)).collect(),
            cs: (0..tables).map(|_| storage(ctx, "cs", (1 + tmax) * hd * 4)).collect(),
            x: storage(ctx, "x", tmax * e * 4),
            o: storage(ctx, "o", tmax * e * 4),
            qkv: storage(ctx, "qkv", tmax * (qd + 2 * kvd) * 4),
            q: storage(ctx, "q", tmax * qd * 4),
            q_sink: storage(ctx, "q_sink", tmax * qd * 4),
            attn: storage(ctx, "attn", tmax * qd * 4),
            gu: storage(ctx, "gate_up", tmax * 2 * ff * 4),
            aq: storage(ctx, "act_q", tmax * widest),
            asc: storage(ctx, "act_scales", tmax * widest / QK * 12),
            scores: storage(ctx, "scores", scores),
            logits: storage(ctx, "logits", tmax * vocab * 4),
            result: storage(ctx, "result", (2 + 2 * GPU_TOP_K) * 4),
            penalty_ids: storage(ctx, "penalty_ids", GPU_MAX_PENALTY_IDS * 4),
            penalty: Uniform::new(ctx, "penalty", &PenaltyParams::default()),
            readback: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: (tmax * vocab * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        })
    }
}
