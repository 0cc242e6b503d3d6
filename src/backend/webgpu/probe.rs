//! Single kernels run on their own, for the tests that hold every kernel to
//! the CPU reference (natively in `tests/webgpu.rs`, in the browser in
//! `tests/web.rs`). Not used by the forward pass. Async because the browser
//! maps a buffer only from its event loop; native tests block on them.

use super::kernels::QuantMode;
use super::{GpuContext, GpuMatrix, Kernels};
use crate::backend::cpu::quant::QK;
use crate::error::{Error, Result};
use wgpu::util::DeviceExt;

fn buf(ctx: &GpuContext, data: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
    let mut v = data.to_vec();
    v.resize(v.len().max(16), 0);
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: &v, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra })
}

fn uni(ctx: &GpuContext, w: &[u32]) -> wgpu::Buffer {
    let mut v = w.to_vec();
    v.resize(8, 0);
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&v), usage: wgpu::BufferUsages::UNIFORM })
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

/// Runs one kernel over `groups` workgroups with `buffers` bound in order.
fn run_one(ctx: &GpuContext, kernel: &super::kernels::Kernel, buffers: &[&wgpu::Buffer], groups: (u32, u32)) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        let g = kernel.bind(ctx, buffers);
        cp.set_pipeline(&kernel.pipeline);
        cp.set_bind_group(0, &g, &[]);
        cp.dispatch_workgroups(groups.0, groups.1, 1);
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
}

/// `t` rows of `x` prepared as `input` says, quantized to Q8 and multiplied
/// by `m`: `[t, m.rows]`. Also returns the quantized activations (bytes, then
/// d, s, sx per block).
pub async fn matmul(ctx: &GpuContext, m: &GpuMatrix, x: &[f32], t: usize, input: Input<'_>) -> Result<(Vec<f32>, Vec<i8>, Vec<f32>)> {
    let mut k = Kernels::new(ctx, false);
    let cols = m.cols;
    let nb = cols / QK;
    let step = uni(ctx, &[t as u32, 0, t as u32, 0]);
    let xb = buf(ctx, bytemuck::cast_slice(x), wgpu::BufferUsages::empty());
    let ones = vec![1f32; cols];
    let (w, eps, mode, stride) = match input {
        Input::Norm(w, eps) => (w, eps, QuantMode::Norm, cols),
        Input::Plain => (&ones[..], 0.0, QuantMode::Plain, cols),
        Input::Silu => (&ones[..], 0.0, QuantMode::Silu, 2 * cols),
    };
    let wb = buf(ctx, bytemuck::cast_slice(w), wgpu::BufferUsages::empty());
    let aq = buf(ctx, &vec![0u8; t * cols], wgpu::BufferUsages::empty());
    let asc = buf(ctx, &vec![0u8; t * nb * 12], wgpu::BufferUsages::empty());
    let out = buf(ctx, &vec![0u8; t * m.rows * 4], wgpu::BufferUsages::empty());
    let qp = uni(ctx, &[cols as u32, stride as u32, cols as u32, 0, eps.to_bits(), 127f32.to_bits()]);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut cp = enc.begin_compute_pass(&Default::default());
        let kq = k.quant(mode);
        let g = kq.bind(ctx, &[&qp, &step, &xb, &wb, &aq, &asc]);
        cp.set_pipeline(&kq.pipeline);
        cp.set_bind_group(0, &g, &[]);
        cp.dispatch_workgroups(t as u32, 1, 1);
        for part in &m.parts {
            let mp = uni(ctx, &[part.rows as u32, nb as u32, m.rows as u32, part.row_start as u32, 0]);
            let km = k.matmul(m.format, false);
            let g = km.bind(ctx, &[&mp, &step, &part.qs, &part.ws, &aq, &asc, &out]);
            cp.set_pipeline(&km.pipeline);
            cp.set_bind_group(0, &g, &[]);
            cp.dispatch_workgroups(part.rows.div_ceil(64) as u32, t.div_ceil(4) as u32, 1);
        }
    }
    ctx.queue.submit([enc.finish()]);
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
    let kvp = uni(ctx, &[n_head as u32, n_kv as u32, hd as u32, cap as u32, 0, (1.0 / (hd as f32).sqrt()).to_bits(), 0, 0]);
    let step = uni(ctx, &[1, 0, 1, 0]);
    let tok = buf(ctx, bytemuck::cast_slice(&[0u32, (used - 1) as u32, used as u32, 0]), wgpu::BufferUsages::empty());
    let qb = buf(ctx, bytemuck::cast_slice(q), wgpu::BufferUsages::empty());
    let kb = buf(ctx, bytemuck::cast_slice(k), wgpu::BufferUsages::empty());
    let vb = buf(ctx, bytemuck::cast_slice(v), wgpu::BufferUsages::empty());
    let scores = buf(ctx, &vec![0u8; n_head * cap * 4], wgpu::BufferUsages::empty());
    let out = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    run_one(ctx, &k_all.attention, &[&kvp, &step, &tok, &qb, &qb, &kb, &vb, &scores, &out], (n_head as u32, 1));
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
    use super::kernels::{Bind, Kernel};
    let k = Kernel::new(ctx, "probe", include_str!("shaders/probe.wgsl"), &[Bind::Read, Bind::ReadWrite], &[("FUNC", func as f64)]);
    let xb = buf(ctx, bytemuck::cast_slice(x), wgpu::BufferUsages::empty());
    let yb = buf(ctx, &vec![0u8; x.len() * 4], wgpu::BufferUsages::empty());
    let groups = x.len().div_ceil(64);
    run_one(ctx, &k, &[&xb, &yb], (groups.min(65535) as u32, groups.div_ceil(65535) as u32));
    Ok(bytemuck::cast_slice(&read(ctx, &yb, x.len() * 4).await?).to_vec())
}

/// The RoPE kernel alone on one token's `[q | k | v]` row at the angles
/// `cos`/`sin` (`hd / 2` each; f32 cache, slot 0): returns the rotated
/// queries `[n_head * hd]` and keys `[n_kv * hd]`.
pub async fn rope(ctx: &GpuContext, n_head: usize, n_kv: usize, hd: usize, qkv: &[f32], cos: &[f32], sin: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let k_all = Kernels::new(ctx, false);
    let cap = 1;
    let kvp = uni(ctx, &[n_head as u32, n_kv as u32, hd as u32, cap as u32, qkv.len() as u32, (1.0 / (hd as f32).sqrt()).to_bits(), 0, 0]);
    let step = uni(ctx, &[1, 0, 1, 0]);
    let tok = buf(ctx, bytemuck::cast_slice(&[0u32, 0, 1, 0]), wgpu::BufferUsages::empty());
    let mut cs = vec![0f32; hd];
    cs.extend_from_slice(cos);
    cs.extend_from_slice(sin);
    let csb = buf(ctx, bytemuck::cast_slice(&cs), wgpu::BufferUsages::empty());
    let qkvb = buf(ctx, bytemuck::cast_slice(qkv), wgpu::BufferUsages::empty());
    let q = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    let q_sink = buf(ctx, &vec![0u8; n_head * hd * 4], wgpu::BufferUsages::empty());
    let kc = buf(ctx, &vec![0u8; n_kv * hd * 4], wgpu::BufferUsages::empty());
    let vc = buf(ctx, &vec![0u8; n_kv * hd * 4], wgpu::BufferUsages::empty());
    run_one(ctx, &k_all.rope_kv, &[&kvp, &step, &qkvb, &tok, &csb, &q, &q_sink, &kc, &vc], (1, 1));
    let qr = bytemuck::cast_slice(&read(ctx, &q, n_head * hd * 4).await?).to_vec();
    let kr = bytemuck::cast_slice(&read(ctx, &kc, n_kv * hd * 4).await?).to_vec();
    Ok((qr, kr))
}
