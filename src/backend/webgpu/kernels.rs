//! The compute pipelines, created once at load from the `.wgsl` files (each
//! prefixed with `common.wgsl`, the cache kernels with `kv.wgsl` too),
//! specialized by override constants, with explicit bind group layouts. A
//! kernel's layout comes from its [`Shader`] declaration in `ops.rs`, next to
//! the bindings struct every bind group is made from.

use super::ops::{self, Bindings};
use super::GpuContext;
use crate::backend::cpu::quant::{Offset, QFormat, Values};
use std::collections::HashMap;

const COMMON: &str = include_str!("shaders/common.wgsl");
/// Prefixed to the kernels that touch the KV cache.
const KV: &str = include_str!("shaders/kv.wgsl");

/// How a binding is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// A kernel's WGSL and its bindings in `@binding` order (WGSL name, use).
pub struct Shader {
    pub name: &'static str,
    pub body: &'static str,
    /// Prefixed with `kv.wgsl` (`KvParams`, `KV_F16`).
    pub kv: bool,
    pub binds: &'static [(&'static str, Bind)],
}

impl Shader {
    /// The source as compiled: `common.wgsl`, `kv.wgsl` for the cache kernels, the body.
    pub fn source(&self) -> String {
        if self.kv {
            format!("{COMMON}\n{KV}\n{}", self.body)
        } else {
            format!("{COMMON}\n{}", self.body)
        }
    }
}

/// One specialized kernel and the layout its bind groups follow.
#[derive(Clone)]
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    binds: &'static [(&'static str, Bind)],
}

impl Kernel {
    pub(super) fn new(ctx: &GpuContext, shader: &Shader, constants: &[(&str, f64)]) -> Self {
        let device = &ctx.device;
        let name = shader.name;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(shader.source().into()) });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = shader
            .binds
            .iter()
            .enumerate()
            .map(|(i, (_, b))| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Bind::Uniform => wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
                    Bind::Read => wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: true }, has_dynamic_offset: false, min_binding_size: None },
                    Bind::ReadWrite => wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: false }, has_dynamic_offset: false, min_binding_size: None },
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(name), entries: &entries });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(name), bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        Self { pipeline, layout, binds: shader.binds }
    }

    /// A bind group of `b`, whose bindings must be the ones this kernel was declared with.
    pub fn bind<B: Bindings>(&self, ctx: &GpuContext, b: &B) -> wgpu::BindGroup {
        assert_eq!(self.binds, B::BINDS, "bind group for another kernel's layout");
        let buffers = b.buffers(ctx);
        let entries: Vec<wgpu::BindGroupEntry> = buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &self.layout, entries: &entries })
    }
}

/// Quantize modes (see quantize.wgsl).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMode {
    Norm = 0,
    Plain = 1,
    Silu = 2,
    Gelu = 3,
}

/// A format's override constants: how its values are packed (QUANTS) and its offset term (OFFSET).
fn format_constants(f: QFormat) -> [(&'static str, f64); 2] {
    let quants = match f.values() {
        Values::Four => 0.0,
        Values::Five => 1.0,
        Values::Eight => 2.0,
    };
    let offset = match f.offset() {
        Offset::None => 0.0,
        Offset::Rounded => 1.0,
        Offset::Exact => 2.0,
    };
    [("QUANTS", quants), ("OFFSET", offset)]
}

/// Every pipeline of the forward pass (matmul and embedding variants made on demand).
pub struct Kernels {
    ctx: GpuContext,
    kv_f16: bool,
    quant: HashMap<QuantMode, Kernel>,
    matmul: HashMap<(QFormat, bool), Kernel>,
    embed: HashMap<QFormat, Kernel>,
    rope_kv: HashMap<ops::RopeVariant, Kernel>,
    pub(super) norm_add: Kernel,
    pub(super) attention: Kernel,
    pub(super) argmax: Kernel,
    pub(super) penalty: Kernel,
    pub(super) topk: Kernel,
}

impl Kernels {
    pub fn new(ctx: &GpuContext, kv_f16: bool) -> Self {
        let f = if kv_f16 { 1.0 } else { 0.0 };
        Self {
            ctx: ctx.clone(),
            kv_f16,
            quant: HashMap::new(),
            matmul: HashMap::new(),
            embed: HashMap::new(),
            rope_kv: HashMap::new(),
            norm_add: Kernel::new(ctx, &ops::NORM_ADD, &[]),
            attention: Kernel::new(ctx, &ops::ATTENTION, &[("KV_F16", f)]),
            argmax: Kernel::new(ctx, &ops::ARGMAX, &[]),
            penalty: Kernel::new(ctx, &ops::PENALTY, &[]),
            topk: Kernel::new(ctx, &ops::TOPK, &[]),
        }
    }

    pub fn kv_f16(&self) -> bool {
        self.kv_f16
    }

    pub fn quant(&mut self, mode: QuantMode) -> &Kernel {
        let ctx = &self.ctx;
        self.quant.entry(mode).or_insert_with(|| {
            Kernel::new(ctx, &ops::QUANTIZE, &[("MODE", mode as u32 as f64)])
        })
    }

    pub fn rope_kv(&mut self, v: ops::RopeVariant) -> &Kernel {
        let (ctx, f) = (&self.ctx, if self.kv_f16 { 1.0 } else { 0.0 });
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        self.rope_kv.entry(v).or_insert_with(|| {
            Kernel::new(ctx, &ops::ROPE_KV, &[("KV_F16", f), ("BIAS", flag(v.bias)), ("QK_NORM", flag(v.qk_norm)), ("ROPE_HALVES", flag(v.rope_halves))])
        })
    }

    pub fn matmul(&mut self, format: QFormat, acc: bool) -> &Kernel {
        let ctx = &self.ctx;
        self.matmul.entry((format, acc)).or_insert_with(|| {
            let [quants, offset] = format_constants(format);
            Kernel::new(ctx, &ops::MATMUL, &[quants, offset, ("ACC", if acc { 1.0 } else { 0.0 })])
        })
    }

    pub fn embed(&mut self, format: QFormat) -> &Kernel {
        let ctx = &self.ctx;
        self.embed
            .entry(format)
            .or_insert_with(|| Kernel::new(ctx, &ops::EMBED, &[format_constants(format)[0]]))
    }
}
