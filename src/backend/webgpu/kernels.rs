//! The compute pipelines, created once at load from the `.wgsl` files (each
//! prefixed with `common.wgsl`), specialized by override constants, with
//! explicit bind group layouts.

use super::GpuContext;
use crate::backend::cpu::quant::QFormat;
use std::collections::HashMap;

const COMMON: &str = include_str!("shaders/common.wgsl");
/// Prefixed to the kernels that touch the KV cache.
const KV: &str = include_str!("shaders/kv.wgsl");

/// How a binding is used.
#[derive(Clone, Copy)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// One specialized kernel and the layout its bind groups follow.
#[derive(Clone)]
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    pub(super) fn new(ctx: &GpuContext, name: &str, src: &str, binds: &[Bind], constants: &[(&str, f64)]) -> Self {
        let device = &ctx.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{src}").into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
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
        Self { pipeline, layout }
    }

    /// A bind group of `buffers` in binding order.
    pub fn bind(&self, ctx: &GpuContext, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &self.layout, entries: &entries })
    }
}

use Bind::{Read as R, ReadWrite as W, Uniform as U};

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
    }
}

/// Every pipeline of the forward pass (matmul and embedding variants made on demand).
pub struct Kernels {
    ctx: GpuContext,
    kv_f16: bool,
    quant: HashMap<QuantMode, Kernel>,
    matmul: HashMap<(QFormat, bool), Kernel>,
    embed: HashMap<QFormat, Kernel>,
    pub rope_kv: Kernel,
    pub attention: Kernel,
    pub argmax: Kernel,
    pub penalty: Kernel,
    pub topk: Kernel,
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
            rope_kv: Kernel::new(ctx, "rope_kv", &format!("{KV}\n{}", include_str!("shaders/rope_kv.wgsl")), &[U, U, R, R, R, W, W, W, W], &[("KV_F16", f)]),
            attention: Kernel::new(ctx, "attention", &format!("{KV}\n{}", include_str!("shaders/attention.wgsl")), &[U, U, R, R, R, R, R, W, W], &[("KV_F16", f)]),
            argmax: Kernel::new(ctx, "argmax", include_str!("shaders/argmax.wgsl"), &[U, U, R, W], &[]),
            penalty: Kernel::new(ctx, "penalty", include_str!("shaders/penalty.wgsl"), &[U, U, R, W], &[]),
            topk: Kernel::new(ctx, "topk", include_str!("shaders/topk.wgsl"), &[U, U, R, W], &[]),
        }
    }

    pub fn kv_f16(&self) -> bool {
        self.kv_f16
    }

    pub fn quant(&mut self, mode: QuantMode) -> &Kernel {
        let ctx = &self.ctx;
        self.quant.entry(mode).or_insert_with(|| {
            Kernel::new(ctx, "quantize", include_str!("shaders/quantize.wgsl"), &[U, U, R, R, W, W], &[("MODE", mode as u32 as f64)])
        })
    }

    pub fn matmul(&mut self, format: QFormat, acc: bool) -> &Kernel {
        let ctx = &self.ctx;
        self.matmul.entry((format, acc)).or_insert_with(|| {
            Kernel::new(ctx, "matmul", include_str!("shaders/matmul.wgsl"), &[U, U, R, R, R, R, W], &[("FORMAT", format_id(format)), ("ACC", if acc { 1.0 } else { 0.0 })])
        })
    }

    pub fn embed(&mut self, format: QFormat) -> &Kernel {
        let ctx = &self.ctx;
        self.embed
            .entry(format)
            .or_insert_with(|| Kernel::new(ctx, "embed", include_str!("shaders/embed.wgsl"), &[U, U, R, R, R, W], &[("FORMAT", format_id(format))]))
    }
}
