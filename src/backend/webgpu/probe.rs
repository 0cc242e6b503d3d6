//! Single kernels run on their own, for the tests that hold every kernel to
//! the CPU reference (natively in `tests/webgpu.rs`, in the browser in
//! `tests/web.rs`). Not used by the forward pass. Async because the browser
//! maps a buffer only from its event loop; native tests block on them.

use super::kernels::QuantMode;
use super::ops::{self, Pass};
use super::uniforms::{KvParams, MatmulParams, QuantParams, Step, TokenInfo, Uniform};
use super::{GpuContext, GpuMatrix, Kernels};
use crate::backend::cpu::quant::QK;
use crate::error::{Error, Result};
use wgpu::util::DeviceExt;

fn buf(ctx: &GpuContext, data: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
    let mut v = data.to_vec();
    v.resize(v.len().max(16), 0);
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: &v, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra })
}

/// The step of `t` tokens that all want logits.
fn step(ctx: &GpuContext, t: usize) -> (Step, Uniform<Step>) {
    let s = Step { t: t as u32, first_out: 0, n_out: t as u32, _pad: 0 };
    (s, Uniform::new(ctx, "step", &s))
}

async fn read(ctx: &GpuContext, b: &wgpu::Buffer, bytes: usize) -> Result<Vec<u8>> {
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};
    let rb = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes as u64, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &rb, 0, bytes as u64);
    ctx.queue.submit([enc.finish()]);
    type Slot = (Option<std::result::Result<(), wgpu::BufferAsyncError>>, Option<Waker>);
    let slot: Arc<Mutex<Slot>> = Arc::new(Mutex::new((None, None)));
    let s2 = slot.clone();
    rb.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let mut s = s2.lock().unwrap();
        s.0 = Some(r);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
    std::future::poll_fn(|cx| {
        let mut s = slot.lock().unwrap();
        match s.0.take() {
            Some(r) => Poll::Ready(r.map_err(|e| Error::Gpu(e.to_string()))),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await?;
    let v = rb.slice(..).get_mapped_range().map_err(|e| Error::Gpu(e.to_string()))?.to_vec();
    Ok(v)
}

/// Runs `passes` in order in one compute pass for `step`.
fn run(ctx: &GpuContext, passes: &[Pass], step: &Step) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        for p in passes {
            p.record(&mut cp, step, 0);
        }
    }
    ctx.queue.submit([enc.finish()]);
}

/// How the activations reach the matmul.
pub enum Input<'a> {
    /// `x` as it is (`[t, cols]`).
    Plain,
    /// RMSNorm with these weights and epsilon first.
    Norm(&'a [f32], f32),
    /// `x` is `[t, 2 cols]`, gate then up: SiLU(gate) * up.
    Silu,
    /// As `Silu` with GELU (tanh approximation).
    Gelu,
}

/// `t` rows of `x` prepared as `input` says, quantized to Q8 and multiplied
/// by `m`: `[t, m.rows]`. Also returns the quantized activations (bytes, then
/// d, s, sx per block).
pub async fn matmul(ctx: &GpuContext, m: &GpuMatrix, x: &[f32], t: usize, input: Input<'_>) -> Result<(Vec<f32>, Vec<i8>, Vec<f32>)> {
    let mut k = Kernels::new(ctx, false);
    let cols = m.cols;
    let nb = cols / QK;
    let (st, step) = step(ctx, t);
    let xb = buf(ctx, bytemuck::cast_slice(x), wgpu::BufferUsages::empty());
    let ones = vec![1f32; cols];
    let (w, eps, mode, stride) = match input {
        Input::Norm(w, eps) => (w, eps, QuantMode::Norm, cols),
        Input::Plain => (&ones[..], 0.0, QuantMode::Plain, cols),
        Input::Silu => (&ones[..], 0.0, QuantMode::Silu, 2 * cols),
        Input::Gelu => (&ones[..], 0.0, QuantMode::Gelu, 2 * cols),
    };
    let wb = buf(ctx, bytemuck::cast_slice(w), wgpu::BufferUsages::empty());
    let aq = buf(ctx, &vec![0u8; t * cols], wgpu::BufferUsages::empty());
    let asc = buf(ctx, &vec![0u8; t * nb * 12], wgpu::BufferUsages::empty());
    let out = buf(ctx, &vec![0u8; t * m.rows * 4], wgpu::BufferUsages::empty());
    let qp = QuantParams { cols: cols as u32, in_stride: stride as u32, up_offset: cols as u32, out_rows: 0, eps, q8_max: 127.0, ..Default::default() };
    let mut passes = vec![ops::quantize(&mut k, ctx, mode, t, ops::Quantize { p: qp, step: &step, x: &xb, w: &wb, q: &aq, sc: &asc })?];
    for part in &m.parts {
        let p = MatmulParams { rows: part.rows as u32, nb: nb as u32, out_stride: m.rows as u32, out_offset: part.row_start as u32, ..Default::default() };
        passes.push(ops::matmul(&mut k, ctx, m.format, false, t, ops::Matmul { p, step: &step, qs: &part.qs, ws: &part.ws, aq: &aq, asc: &asc, out: &out })?);
    }
    run(ctx, &passes, &st);
    let y: Vec<f32> = bytemuck::cast_slice(&read(ctx, &out, t * m.rows * 4).await?).to_vec();
    let q: Vec<i8> = bytemuck::cast_slice(&read(ctx, &aq, t * cols).await?).to_vec();
    let s: Vec<f32> = bytemuck::cast_slice(&read(ctx, &asc, t * nb * 12).await?).to_vec();
    Ok((y, q, s))
}

/// The attention kernel alone for one token attending `used` cached slots
/// (slots `0..used` of each kv head, `[n_kv, cap, hd]`, f32 cache, no sinks):
/// `q` is `[n_head * hd]`; returns `[n_head * hd]`.
pub async fn attention(ctx: &GpuContext, n_head: usize, n_kv: usize, hd: usize, cap: usize, used: usize, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
    let k_all = Kernels::new(ctx, false);
    let (st, step) = step(ctx, 1);
    let info = TokenInfo { base: 0, slot: (used - 1) as u32, used: used as u32, sink_until: 0 };
    let tok = buf(ctx, bytemuck::bytes_of(&info), wgpu::BufferUsages::empty());
    let qb = buf(ctx, bytemuck::cast_slice(q), wgpu::BufferUsages::empty());
    let kb = buf(ctx, bytemuck::cast_slice(k), wgpu::BufferUsages::empty());
    let vb = buf(ctx, bytemuck::cast_slice(v), wgpu::BufferUsages::empty());
    let scores = buf(ctx, &vec![0u8; n_head * cap * 4], wgpu::BufferUsages::empty());
    let out = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    let b = ops::Attention { p: KvParams::new(n_head, n_kv, hd, cap), step: &step, tok: &tok, q: &qb, q_sink: &qb, kc: &kb, vc: &vb, scores: &scores, out: &out };
    run(ctx, &[ops::attention(&k_all, ctx, 1, b)?], &st);
    Ok(bytemuck::cast_slice(&read(ctx, &out, n_head * hd * 4).await?).to_vec())
}

/// `kv_exp` (common.wgsl) of every element of `x`, on the GPU.
pub async fn exp(ctx: &GpuContext, x: &[f32]) -> Result<Vec<f32>> {
    elementwise(ctx, 0, x).await
}

/// `f16r` (common.wgsl: rounded to f16 and back) of every element of `x`.
pub async fn f16_round(ctx: &GpuContext, x: &[f32]) -> Result<Vec<f32>> {
    elementwise(ctx, 1, x).await
}

async fn elementwise(ctx: &GpuContext, func: u32, x: &[f32]) -> Result<Vec<f32>> {
    let xb = buf(ctx, bytemuck::cast_slice(x), wgpu::BufferUsages::empty());
    let yb = buf(ctx, &vec![0u8; x.len() * 4], wgpu::BufferUsages::empty());
    let pass = ops::elementwise(ctx, func, x.len(), ops::Elementwise { x: &xb, y: &yb })?;
    run(ctx, &[pass], &Step::default());
    Ok(bytemuck::cast_slice(&read(ctx, &yb, x.len() * 4).await?).to_vec())
}

/// What the RoPE kernel does before rotating (the block's variant): biases
/// (`[q | k | v]` wide) and QK-norm weights (query heads', then key heads').
#[derive(Default)]
pub struct RopeInput<'a> {
    pub variant: ops::RopeVariant,
    pub bias: &'a [f32],
    pub norms: &'a [f32],
    pub eps: f32,
}

/// The RoPE kernel alone on one token's `[q | k | v]` row at the angles
/// `cos`/`sin` (`hd / 2` each; f32 cache, slot 0): returns the rotated
/// queries `[n_head * hd]`, keys `[n_kv * hd]` and the values as stored.
#[allow(clippy::too_many_arguments)]
pub async fn rope(ctx: &GpuContext, n_head: usize, n_kv: usize, hd: usize, qkv: &[f32], cos: &[f32], sin: &[f32], input: RopeInput<'_>) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let mut k_all = Kernels::new(ctx, false);
    let cap = 1;
    let p = KvParams { qkv_stride: qkv.len() as u32, eps: input.eps, ..KvParams::new(n_head, n_kv, hd, cap) };
    let (st, step) = step(ctx, 1);
    let info = TokenInfo { base: 0, slot: 0, used: 1, sink_until: 0 };
    let tok = buf(ctx, bytemuck::bytes_of(&info), wgpu::BufferUsages::empty());
    let mut cs = vec![0f32; hd];
    cs.extend_from_slice(cos);
    cs.extend_from_slice(sin);
    let csb = buf(ctx, bytemuck::cast_slice(&cs), wgpu::BufferUsages::empty());
    let qkvb = buf(ctx, bytemuck::cast_slice(qkv), wgpu::BufferUsages::empty());
    let bias = buf(ctx, bytemuck::cast_slice(input.bias), wgpu::BufferUsages::empty());
    let norms = buf(ctx, bytemuck::cast_slice(input.norms), wgpu::BufferUsages::empty());
    let q = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    let q_sink = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    let kc = buf(ctx, &vec![0u8; n_kv * hd * 4], wgpu::BufferUsages::empty());
    let vc = buf(ctx, &vec![0u8; n_kv * hd * 4], wgpu::BufferUsages::empty());
    let b = ops::RopeKv { p, step: &step, qkv: &qkvb, tok: &tok, cs: &csb, bias: &bias, norms: &norms, q: &q, q_sink: &q_sink, kc: &kc, vc: &vc };
    run(ctx, &[ops::rope_kv(&mut k_all, ctx, input.variant, 1, b)?], &st);
    let qr = bytemuck::cast_slice(&read(ctx, &q, n_head * hd * 4).await?).to_vec();
    let kr = bytemuck::cast_slice(&read(ctx, &kc, n_kv * hd * 4).await?).to_vec();
    let vr = bytemuck::cast_slice(&read(ctx, &vc, n_kv * hd * 4).await?).to_vec();
    Ok((qr, kr, vr))
}
