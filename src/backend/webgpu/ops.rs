//! One constructor per kernel: each kernel's [`Shader`] declaration, the
//! struct of its bindings in WGSL `@binding` order (typed parameters, named
//! buffers with their shapes), and a function that checks the buffers against
//! the parameters and returns a recorded [`Pass`] (pipeline, bind group, and
//! how its workgroup grid follows the step). The pipeline layout and every bind
//! group are made from the one `bindings!` declaration, and a test holds that
//! declaration to the shader's (`uniforms.rs`).
//!
//! Shapes: `t` is the step's tokens (at most `tokens`, the rows the buffers
//! are sized for), `nb = cols / 32`, `qd = n_head * hd`. Weights are
//! block-major (see `matrix.rs`).

use super::kernels::{Bind, Kernel, Kernels, QuantMode, Shader};
use super::matrix::quant_bytes;
use super::uniforms::{EmbedParams, KvParams, MatmulParams, NormParams, PenaltyParams, QuantParams, Step, Uniform, VocabParams};
use super::GpuContext;
use crate::backend::cpu::quant::{QFormat, QK};
use crate::error::{Error, Result};

/// The bindings of one kernel, in `@binding` order.
pub trait Bindings {
    /// `(WGSL variable name, use)` per binding.
    const BINDS: &'static [(&'static str, Bind)];
    /// The buffers to bind, in the same order (parameters become a new uniform buffer).
    fn buffers(&self, ctx: &GpuContext) -> Vec<wgpu::Buffer>;
}

/// Declares a kernel's bindings struct. Field kinds: `Params<T>` a uniform
/// made from the value, `Uniform<T>` a uniform buffer rewritten per step,
/// `Read` / `ReadWrite` storage buffers.
macro_rules! bindings {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $f:ident: $kind:ident $(<$t:ty>)?,)* }) => {
        $(#[$m])*
        pub struct $name<'a> {
            $($(#[$fm])* pub $f: bindings!(@field $kind $(<$t>)?),)*
        }
        impl Bindings for $name<'_> {
            const BINDS: &'static [(&'static str, Bind)] = &[$((stringify!($f), bindings!(@bind $kind)),)*];
            fn buffers(&self, ctx: &GpuContext) -> Vec<wgpu::Buffer> {
                let _ = ctx; // used only by `Params` bindings
                vec![$(bindings!(@buffer ctx, self.$f, $kind)),*]
            }
        }
    };
    (@field Params<$t:ty>) => { $t };
    (@field Uniform<$t:ty>) => { &'a Uniform<$t> };
    (@field $k:ident) => { &'a wgpu::Buffer };
    (@bind Params) => { Bind::Uniform };
    (@bind Uniform) => { Bind::Uniform };
    (@bind Read) => { Bind::Read };
    (@bind ReadWrite) => { Bind::ReadWrite };
    (@buffer $ctx:ident, $e:expr, Params) => { Uniform::new($ctx, "params", &$e).buffer().clone() };
    (@buffer $ctx:ident, $e:expr, Uniform) => { $e.buffer().clone() };
    (@buffer $ctx:ident, $e:expr, $k:ident) => { $e.clone() };
}

/// How a pass's workgroup grid follows the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// One workgroup per token.
    Tokens,
    /// One workgroup per wanted output row.
    OutRows,
    /// `groups` along x, four tokens (or output rows) per workgroup along y.
    Matmul { groups: u32, out: bool },
    /// One workgroup per (head, token).
    Heads(u32),
    /// 64 penalized ids per workgroup.
    PenaltyIds,
    /// One workgroup.
    One,
    /// A fixed grid (the probes).
    Fixed(u32, u32),
}

impl Grid {
    /// Workgroups along x and y for `step` (`penalty_ids` ids to penalize).
    pub fn size(self, step: &Step, penalty_ids: usize) -> (u32, u32) {
        let (n, n_out) = (step.t, step.n_out);
        match self {
            Grid::Tokens => (n, 1),
            Grid::OutRows => (n_out, 1),
            Grid::Matmul { groups, out } => (groups, (if out { n_out } else { n }).div_ceil(4)),
            Grid::Heads(h) => (h, n),
            Grid::PenaltyIds => (penalty_ids.div_ceil(64) as u32, 1),
            Grid::One => (1, 1),
            Grid::Fixed(x, y) => (x, y),
        }
    }
}

/// One recorded dispatch: pipeline and bind group made once, replayed every step.
#[derive(Clone)]
pub struct Pass {
    pub pipeline: wgpu::ComputePipeline,
    pub group: wgpu::BindGroup,
    pub grid: Grid,
}

impl Pass {
    fn new<B: Bindings>(kernel: &Kernel, ctx: &GpuContext, b: &B, grid: Grid) -> Self {
        Pass { pipeline: kernel.pipeline.clone(), group: kernel.bind(ctx, b), grid }
    }

    /// Records the dispatch into `cp` for `step`.
    pub fn record(&self, cp: &mut wgpu::ComputePass<'_>, step: &Step, penalty_ids: usize) {
        let (x, y) = self.grid.size(step, penalty_ids);
        cp.set_pipeline(&self.pipeline);
        cp.set_bind_group(0, &self.group, &[]);
        cp.dispatch_workgroups(x, y, 1);
    }
}

/// `buf` holds at least `elems` 4-byte elements.
fn holds(kernel: &str, name: &str, buf: &wgpu::Buffer, elems: usize) -> Result<()> {
    if buf.size() < 4 * elems as u64 {
        return Err(Error::Backend(format!("{kernel}: `{name}` holds {} bytes, the pass needs {}", buf.size(), 4 * elems)));
    }
    Ok(())
}

fn ensure(kernel: &str, ok: bool, what: &str) -> Result<()> {
    if !ok {
        return Err(Error::Backend(format!("{kernel}: {what}")));
    }
    Ok(())
}

/// A `[rows, nb]` block matrix part: quants and two words per block.
fn weights(kernel: &str, format: QFormat, rows: usize, nb: usize, qs: &wgpu::Buffer, ws: &wgpu::Buffer) -> Result<()> {
    holds(kernel, "qs", qs, rows * nb * quant_bytes(format) / 4)?;
    holds(kernel, "ws", ws, rows * nb * 2)
}

bindings! {
    /// embed.wgsl: the rows of `ids` inside one part of the embedding matrix, dequantized.
    pub struct Embed {
        p: Params<EmbedParams>,
        step: Uniform<Step>,
        /// `[t]` u32 token ids.
        ids: Read,
        /// `[nb, rows]` blocks of quants (this part's rows).
        qs: Read,
        /// `[nb, rows, 2]` u32: the scale's f32 bits, the offset's or the sub-scales (matrix.rs).
        ws: Read,
        /// `[t, cols]` f32.
        x: ReadWrite,
    }
}

pub const EMBED: Shader = Shader { name: "embed", body: include_str!("shaders/embed.wgsl"), kv: false, binds: Embed::BINDS };

/// The embedding of one matrix part; one workgroup per token.
pub fn embed(k: &mut Kernels, ctx: &GpuContext, format: QFormat, tokens: usize, b: Embed<'_>) -> Result<Pass> {
    let p = &b.p;
    let (cols, rows) = (p.cols as usize, p.rows as usize);
    ensure("embed", cols % QK == 0, "columns are not whole blocks")?;
    holds("embed", "ids", b.ids, tokens)?;
    weights("embed", format, rows, cols / QK, b.qs, b.ws)?;
    holds("embed", "x", b.x, tokens * cols)?;
    Ok(Pass::new(k.embed(format), ctx, &b, Grid::Tokens))
}

bindings! {
    /// quantize.wgsl: activation rows to Q8 blocks (after RMSNorm, as they are, or SiLU(gate) * up).
    pub struct Quantize {
        p: Params<QuantParams>,
        step: Uniform<Step>,
        /// `[t, in_stride]` f32 rows (gate at 0 and up at `up_offset` in the SiLU mode).
        x: Read,
        /// `[cols]` f32 RMSNorm weights (unused by the other modes).
        w: Read,
        /// `[t, nb, 8]` u32: four signed bytes each.
        q: ReadWrite,
        /// `[t, nb, 3]` f32: d, d * sum as f16, sum * d_f16.
        sc: ReadWrite,
    }
}

pub const QUANTIZE: Shader = Shader { name: "quantize", body: include_str!("shaders/quantize.wgsl"), kv: false, binds: Quantize::BINDS };

/// Activation quantization; one workgroup per token (or output row).
pub fn quantize(k: &mut Kernels, ctx: &GpuContext, mode: QuantMode, tokens: usize, b: Quantize<'_>) -> Result<Pass> {
    let p = &b.p;
    let (cols, stride, up) = (p.cols as usize, p.in_stride as usize, p.up_offset as usize);
    ensure("quantize", cols % QK == 0, "columns are not whole blocks")?;
    let gated = matches!(mode, QuantMode::Silu | QuantMode::Gelu);
    ensure("quantize", if gated { up >= cols && up + cols <= stride } else { cols <= stride }, "rows narrower than the columns read")?;
    holds("quantize", "x", b.x, tokens * stride)?;
    holds("quantize", "w", b.w, if mode == QuantMode::Norm { cols } else { 0 })?;
    holds("quantize", "q", b.q, tokens * cols / 4)?;
    holds("quantize", "sc", b.sc, tokens * cols / QK * 3)?;
    let grid = if p.out_rows == 1 { Grid::OutRows } else { Grid::Tokens };
    Ok(Pass::new(k.quant(mode), ctx, &b, grid))
}

bindings! {
    /// matmul.wgsl: `out[t][out_offset + r] (+)= dot(weight row r, activation row t)`.
    pub struct Matmul {
        p: Params<MatmulParams>,
        step: Uniform<Step>,
        /// `[nb, rows]` blocks of quants.
        qs: Read,
        /// `[nb, rows, 2]` u32: the scale's f32 bits, the offset's or the sub-scales (matrix.rs).
        ws: Read,
        /// `[t, nb, 8]` u32 activation quants (quantize.wgsl's `q`).
        aq: Read,
        /// `[t, nb, 3]` f32 activation scales (quantize.wgsl's `sc`).
        asc: Read,
        /// `[t, out_stride]` f32.
        out: ReadWrite,
    }
}

pub const MATMUL: Shader = Shader { name: "matmul", body: include_str!("shaders/matmul.wgsl"), kv: false, binds: Matmul::BINDS };

/// One matrix part times the activations (`acc`: added to `out`); 64 rows by four tokens per workgroup.
pub fn matmul(k: &mut Kernels, ctx: &GpuContext, format: QFormat, acc: bool, tokens: usize, b: Matmul<'_>) -> Result<Pass> {
    let p = &b.p;
    let (rows, nb, stride) = (p.rows as usize, p.nb as usize, p.out_stride as usize);
    ensure("matmul", p.out_offset as usize + rows <= stride, "output rows past the row stride")?;
    weights("matmul", format, rows, nb, b.qs, b.ws)?;
    holds("matmul", "aq", b.aq, tokens * nb * 8)?;
    holds("matmul", "asc", b.asc, tokens * nb * 3)?;
    holds("matmul", "out", b.out, tokens * stride)?;
    let grid = Grid::Matmul { groups: rows.div_ceil(64) as u32, out: p.out_rows == 1 };
    Ok(Pass::new(k.matmul(format, acc), ctx, &b, grid))
}

/// The cache kernels' shapes: `tok`, the queries and the cache.
fn kv_shapes(kernel: &str, k: &Kernels, p: &KvParams, tokens: usize, tok: &wgpu::Buffer, q: [&wgpu::Buffer; 2], kc: [&wgpu::Buffer; 2]) -> Result<()> {
    let (n_head, n_kv, hd) = (p.n_head as usize, p.n_kv as usize, p.hd as usize);
    ensure(kernel, hd % 2 == 0 && hd <= 256 && n_kv > 0 && n_head % n_kv == 0, "head_dim must be even and at most 256, query heads a multiple of kv heads")?;
    holds(kernel, "tok", tok, tokens * 4)?;
    for (name, b) in ["q", "q_sink"].into_iter().zip(q) {
        holds(kernel, name, b, tokens * n_head * hd)?;
    }
    let cache = n_kv * p.cap as usize * hd;
    for (name, b) in ["kc", "vc"].into_iter().zip(kc) {
        holds(kernel, name, b, if k.kv_f16() { cache / 2 } else { cache })?;
    }
    Ok(())
}

bindings! {
    /// rope_kv.wgsl: RoPE on the queries and keys; keys and values written to their slots.
    pub struct RopeKv {
        p: Params<KvParams>,
        step: Uniform<Step>,
        /// `[t, qkv_stride]` f32 rows `[q | k | v]`.
        qkv: Read,
        /// `[t]` TokenInfo.
        tok: Read,
        /// `[1 + t, hd]` f32: `hd / 2` cosines then sines; row 0 the sink query position.
        cs: Read,
        /// `[qkv_stride]` f32 Q/K/V biases (read by the BIAS variant).
        bias: Read,
        /// `[2, hd]` f32 query then key head norm weights (read by the QK_NORM variant).
        norms: Read,
        /// `[t, qd]` f32 rotated queries.
        q: ReadWrite,
        /// `[t, qd]` f32 queries rotated at the sink query position.
        q_sink: ReadWrite,
        /// `[n_kv, cap, hd]` per sequence (f32, or f16 pairs in u32), from TokenInfo.base.
        kc: ReadWrite,
        /// As `kc`.
        vc: ReadWrite,
    }
}

pub const ROPE_KV: Shader = Shader { name: "rope_kv", body: include_str!("shaders/rope_kv.wgsl"), kv: true, binds: RopeKv::BINDS };

/// The block's preparation of queries and keys before the cache (rope_kv.wgsl's override constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RopeVariant {
    pub bias: bool,
    pub qk_norm: bool,
    pub rope_halves: bool,
}

/// Biases, QK-norm, RoPE and the cache write; one workgroup per token.
pub fn rope_kv(k: &mut Kernels, ctx: &GpuContext, variant: RopeVariant, tokens: usize, b: RopeKv<'_>) -> Result<Pass> {
    let p = &b.p;
    let hd = p.hd as usize;
    ensure("rope_kv", p.qkv_stride >= (p.n_head + 2 * p.n_kv) * p.hd, "qkv rows narrower than q, k and v")?;
    ensure("rope_kv", hd.is_multiple_of(4) && p.n_head + p.n_kv <= 64, "head_dim must be a multiple of 4, query and key heads at most 64")?;
    kv_shapes("rope_kv", k, p, tokens, b.tok, [b.q, b.q_sink], [b.kc, b.vc])?;
    holds("rope_kv", "qkv", b.qkv, tokens * p.qkv_stride as usize)?;
    holds("rope_kv", "cs", b.cs, (1 + tokens) * hd)?;
    holds("rope_kv", "bias", b.bias, if variant.bias { p.qkv_stride as usize } else { 0 })?;
    holds("rope_kv", "norms", b.norms, if variant.qk_norm { 2 * hd } else { 0 })?;
    Ok(Pass::new(k.rope_kv(variant), ctx, &b, Grid::Tokens))
}

bindings! {
    /// norm_add.wgsl: `x[t] += RMSNorm(o[t]) * w` (the post-norm residual add).
    pub struct NormAdd {
        p: Params<NormParams>,
        step: Uniform<Step>,
        /// `[t, cols]` f32 the block's output.
        o: Read,
        /// `[cols]` f32 norm weights.
        w: Read,
        /// `[t, cols]` f32 the residual stream.
        x: ReadWrite,
    }
}

pub const NORM_ADD: Shader = Shader { name: "norm_add", body: include_str!("shaders/norm_add.wgsl"), kv: false, binds: NormAdd::BINDS };

/// The post-norm residual add; one workgroup per token.
pub fn norm_add(k: &Kernels, ctx: &GpuContext, tokens: usize, b: NormAdd<'_>) -> Result<Pass> {
    let cols = b.p.cols as usize;
    holds("norm_add", "o", b.o, tokens * cols)?;
    holds("norm_add", "w", b.w, cols)?;
    holds("norm_add", "x", b.x, tokens * cols)?;
    Ok(Pass::new(&k.norm_add, ctx, &b, Grid::Tokens))
}

bindings! {
    /// attention.wgsl: each token's queries over the slots in use of its cache.
    pub struct Attention {
        p: Params<KvParams>,
        step: Uniform<Step>,
        /// `[t]` TokenInfo.
        tok: Read,
        /// `[t, qd]` f32.
        q: Read,
        /// `[t, qd]` f32 (read for slots below TokenInfo.sink_until).
        q_sink: Read,
        /// `[n_kv, cap, hd]` per sequence, as rope_kv's.
        kc: Read,
        /// As `kc`.
        vc: Read,
        /// `[t, n_head, cap]` f32 scratch.
        scores: ReadWrite,
        /// `[t, qd]` f32.
        out: ReadWrite,
    }
}

pub const ATTENTION: Shader = Shader { name: "attention", body: include_str!("shaders/attention.wgsl"), kv: true, binds: Attention::BINDS };

/// Attention over the cache; one workgroup per (head, token).
pub fn attention(k: &Kernels, ctx: &GpuContext, tokens: usize, b: Attention<'_>) -> Result<Pass> {
    let p = &b.p;
    let (n_head, hd) = (p.n_head as usize, p.hd as usize);
    kv_shapes("attention", k, p, tokens, b.tok, [b.q, b.q_sink], [b.kc, b.vc])?;
    holds("attention", "scores", b.scores, tokens * n_head * p.cap as usize)?;
    holds("attention", "out", b.out, tokens * n_head * hd)?;
    Ok(Pass::new(&k.attention, ctx, &b, Grid::Heads(p.n_head)))
}

bindings! {
    /// penalty.wgsl: the repetition penalty on the last output row.
    pub struct Penalty {
        p: Uniform<PenaltyParams>,
        step: Uniform<Step>,
        /// `[count]` distinct u32 ids.
        ids: Read,
        /// `[n_out, vocab]` f32.
        logits: ReadWrite,
    }
}

pub const PENALTY: Shader = Shader { name: "penalty", body: include_str!("shaders/penalty.wgsl"), kv: false, binds: Penalty::BINDS };

/// The repetition penalty over at most `max_ids` ids; 64 ids per workgroup.
pub fn penalty(k: &Kernels, ctx: &GpuContext, vocab: usize, max_ids: usize, tokens: usize, b: Penalty<'_>) -> Result<Pass> {
    holds("penalty", "ids", b.ids, max_ids)?;
    holds("penalty", "logits", b.logits, tokens * vocab)?;
    Ok(Pass::new(&k.penalty, ctx, &b, Grid::PenaltyIds))
}

bindings! {
    /// argmax.wgsl and topk.wgsl: the best logits of the last output row.
    pub struct Select {
        p: Params<VocabParams>,
        step: Uniform<Step>,
        /// `[n_out, vocab]` f32.
        logits: Read,
        /// argmax: `[id, bits]`; topk: `[count, overflow, (id, bits) * 64]` u32.
        result: ReadWrite,
    }
}

pub const ARGMAX: Shader = Shader { name: "argmax", body: include_str!("shaders/argmax.wgsl"), kv: false, binds: Select::BINDS };
pub const TOPK: Shader = Shader { name: "topk", body: include_str!("shaders/topk.wgsl"), kv: false, binds: Select::BINDS };

fn select_shapes(kernel: &str, tokens: usize, result_words: usize, b: &Select<'_>) -> Result<()> {
    holds(kernel, "logits", b.logits, tokens * b.p.vocab as usize)?;
    holds(kernel, "result", b.result, result_words)
}

/// The greedy token of the last output row; one workgroup.
pub fn argmax(k: &Kernels, ctx: &GpuContext, tokens: usize, b: Select<'_>) -> Result<Pass> {
    select_shapes("argmax", tokens, 2, &b)?;
    Ok(Pass::new(&k.argmax, ctx, &b, Grid::One))
}

/// The `top` best logits of the last output row with their ids; one workgroup.
pub fn topk(k: &Kernels, ctx: &GpuContext, top: usize, tokens: usize, b: Select<'_>) -> Result<Pass> {
    select_shapes("topk", tokens, 2 + 2 * top, &b)?;
    Ok(Pass::new(&k.topk, ctx, &b, Grid::One))
}

bindings! {
    /// probe.wgsl (tests only): a common.wgsl function element-wise.
    pub struct Elementwise {
        /// `[n]` f32.
        x: Read,
        /// `[n]` f32.
        y: ReadWrite,
    }
}

pub const PROBE: Shader = Shader { name: "probe", body: include_str!("shaders/probe.wgsl"), kv: false, binds: Elementwise::BINDS };

/// common.wgsl function `func` (probe.wgsl's FUNC) over the `n` elements of `x`; 64 per workgroup.
pub fn elementwise(ctx: &GpuContext, func: u32, n: usize, b: Elementwise<'_>) -> Result<Pass> {
    holds("probe", "x", b.x, n)?;
    holds("probe", "y", b.y, n)?;
    let groups = n.div_ceil(64);
    let kernel = Kernel::new(ctx, &PROBE, &[("FUNC", func as f64)]);
    Ok(Pass::new(&kernel, ctx, &b, Grid::Fixed(groups.min(65535) as u32, groups.div_ceil(65535) as u32)))
}

/// Every kernel's declaration (for the layout tests).
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) const SHADERS: [Shader; 10] = [EMBED, QUANTIZE, MATMUL, ROPE_KV, NORM_ADD, ATTENTION, PENALTY, ARGMAX, TOPK, PROBE];
