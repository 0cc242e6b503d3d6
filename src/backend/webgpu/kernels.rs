//! The compute pipelines, created once at load from the `.wgsl` files (each
//! prefixed with `common.wgsl`, the cache kernels with `kv.wgsl` too),
//! specialized by override constants, with explicit bind group layouts. A
//! kernel's layout comes from its [`Shader`] declaration in `ops.rs`, next to
//! the bindings struct every bind group is made from.

use super::ops::{self, Bindings};
use super::GpuContext;
use crate::backend::cpu::quant::QFormat;
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
}

fn format_id(f: QFormat) -> f64 {
    match f {
        QFormat::Q4_0 => 0.0,
        QFormat::Q4_1 => 1.0,
        QFormat::Q8_0 => 2.0,
        // Refused when a matrix is made (`matrix::on_gpu`): no pipeline is asked for them.
        QFormat::Q5_0 => 3.0,
        QFormat::Q4K => 4.0,
        QFormat::Q5K => 5.0,
        QFormat::Q6K => 6.0,
    }
}

/// Every pipeline of the forward pass (matmul and embedding variants made on demand).
pub struct Kernels {
    ctx: GpuContext,
    kv_f16: bool,
    quant: HashMap<QuantMode, Kernel>,
    matmul: HashMap<(QFormat, bool), Kernel>,
    embed: HashMap<QFormat, Kernel>,
    pub(super) rope_kv: Kernel,
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
            rope_kv: Kernel::new(ctx, &ops::ROPE_KV, &[("KV_F16", f)]),
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

    pub fn matmul(&mut self, format: QFormat, acc: bool) -> &Kernel {
        let ctx = &self.ctx;
        self.matmul.entry((format, acc)).or_insert_with(|| {
            Kernel::new(ctx, &ops::MATMUL, &[("FORMAT", format_id(format)), ("ACC", if acc { 1.0 } else { 0.0 })])
        })
    }

    pub fn embed(&mut self, format: QFormat) -> &Kernel {
        let ctx = &self.ctx;
        self.embed
            .entry(format)
            .or_insert_with(|| Kernel::new(ctx, &ops::EMBED, &[("FORMAT", format_id(format))]))
    }
}
