//! The uniforms of the WGSL kernels as Rust structs: one `#[repr(C)]` Pod
//! struct per WGSL uniform struct, field for field (same names, f32 fields as
//! `f32`), and [`TokenInfo`], the `vec4<u32>` per token of `rope_kv.wgsl` and
//! `attention.wgsl`. The tests at the bottom parse every shader with naga and
//! hold each struct's size and each member's name, offset and scalar type to
//! the WGSL declaration, and each kernel's bindings (declared in `ops.rs`) to
//! its `@binding` variables, so a change on one side only fails `cargo test`.
//!
//! [`Uniform`] is a uniform buffer that remembers which struct it holds.

use super::GpuContext;
use std::marker::PhantomData;
use wgpu::util::DeviceExt;

/// The scalar type of a uniform member (all are 32-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    U32,
    F32,
}

/// A Rust mirror of a WGSL uniform struct.
pub trait UniformLayout: bytemuck::Pod {
    /// `(member name, byte offset, scalar type)` in declaration order.
    const FIELDS: &'static [(&'static str, usize, Scalar)];
}

trait ScalarOf {
    const SCALAR: Scalar;
}
impl ScalarOf for u32 {
    const SCALAR: Scalar = Scalar::U32;
}
impl ScalarOf for f32 {
    const SCALAR: Scalar = Scalar::F32;
}

/// Declares a uniform struct and its [`UniformLayout`] (names and offsets via `offset_of!`).
macro_rules! uniform_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }
        impl UniformLayout for $name {
            const FIELDS: &'static [(&'static str, usize, Scalar)] =
                &[$((stringify!($f), std::mem::offset_of!($name, $f), <$t as ScalarOf>::SCALAR),)*];
        }
    };
}

uniform_struct! {
    /// common.wgsl `Step`: what changes with every submitted chunk.
    pub struct Step {
        /// Tokens in this chunk.
        pub t: u32,
        /// First row whose logits are wanted (t - 1, or 0 for all rows).
        pub first_out: u32,
        /// Rows whose logits are wanted.
        pub n_out: u32,
        pub _pad: u32,
    }
}

uniform_struct! {
    /// kv.wgsl `KvParams`, shared by rope_kv.wgsl and attention.wgsl.
    pub struct KvParams {
        pub n_head: u32,
        pub n_kv: u32,
        pub hd: u32,
        /// Slots per kv head (the window).
        pub cap: u32,
        /// Width of a `[q | k | v]` row.
        pub qkv_stride: u32,
        /// 1 / sqrt(head_dim).
        pub scale: f32,
        /// The QK-norm's epsilon.
        pub eps: f32,
        pub _p1: u32,
    }
}

impl KvParams {
    /// The cache kernels' parameters for `n_head` query heads over `n_kv`
    /// key/value heads of `hd` dimensions and a window of `cap` slots.
    pub fn new(n_head: usize, n_kv: usize, hd: usize, cap: usize) -> Self {
        Self {
            n_head: n_head as u32,
            n_kv: n_kv as u32,
            hd: hd as u32,
            cap: cap as u32,
            qkv_stride: ((n_head + 2 * n_kv) * hd) as u32,
            scale: 1.0 / (hd as f32).sqrt(),
            ..Default::default()
        }
    }
}

uniform_struct! {
    /// norm_add.wgsl `Params`.
    pub struct NormParams {
        pub cols: u32,
        pub eps: f32,
        pub _p0: u32,
        pub _p1: u32,
    }
}

uniform_struct! {
    /// embed.wgsl `Params`: the part of the embedding matrix one dispatch reads.
    pub struct EmbedParams {
        pub cols: u32,
        pub row_start: u32,
        pub rows: u32,
        pub scale: f32,
    }
}

uniform_struct! {
    /// quantize.wgsl `Params`.
    pub struct QuantParams {
        pub cols: u32,
        pub in_stride: u32,
        /// Offset of `up` inside a row (the SiLU mode).
        pub up_offset: u32,
        /// 1: the rows are the step's output rows (final norm), 0: every token.
        pub out_rows: u32,
        pub eps: f32,
        /// Always 127.0: the shader divides by it (a literal divisor may be
        /// compiled as a multiplication by its rounded reciprocal).
        pub q8_max: f32,
        pub _p1: u32,
        pub _p2: u32,
    }
}

uniform_struct! {
    /// matmul.wgsl `Params`: one part of one weight matrix.
    pub struct MatmulParams {
        pub rows: u32,
        /// Blocks of 32 per row.
        pub nb: u32,
        pub out_stride: u32,
        pub out_offset: u32,
        /// 1: multiply the step's output rows (the output projection), 0: every token.
        pub out_rows: u32,
        pub _p0: u32,
        pub _p1: u32,
        pub _p2: u32,
    }
}

uniform_struct! {
    /// penalty.wgsl `Params`, written with every sampled step.
    pub struct PenaltyParams {
        pub vocab: u32,
        /// Distinct ids in the `ids` binding.
        pub count: u32,
        pub penalty: f32,
        pub _p0: u32,
    }
}

uniform_struct! {
    /// argmax.wgsl's and topk.wgsl's `Params`.
    pub struct VocabParams {
        pub vocab: u32,
        pub _p0: u32,
        pub _p1: u32,
        pub _p2: u32,
    }
}

/// One token's entry of the `tok: array<vec4<u32>>` binding (rope_kv.wgsl,
/// attention.wgsl): `.x` `base`, `.y` `slot`, `.z` `used`, `.w` `sink_until`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TokenInfo {
    /// Where the token's sequence starts in the cache buffers, in elements
    /// (0 but in batches, whose sequences share one buffer).
    pub base: u32,
    /// The cache slot its key and value are written to.
    pub slot: u32,
    /// Slots in use once it is written (it attends slots `0..used`).
    pub used: u32,
    /// Slots below this hold sinks met with the sink-rotated query (0: none).
    pub sink_until: u32,
}

/// A uniform buffer holding a `T`.
pub struct Uniform<T> {
    buffer: wgpu::Buffer,
    _t: PhantomData<T>,
}

impl<T: UniformLayout> Uniform<T> {
    /// A buffer initialized to `value` (rewritable with [`write`](Self::write)).
    pub fn new(ctx: &GpuContext, label: &str, value: &T) -> Self {
        let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        Self { buffer, _t: PhantomData }
    }

    /// Queues `value` to replace the contents before the next submission.
    pub fn write(&self, queue: &wgpu::Queue, value: &T) {
        queue.write_buffer(&self.buffer, 0, bytemuck::bytes_of(value));
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::backend::webgpu::kernels::Bind;
    use crate::backend::webgpu::ops::SHADERS;
    use wgpu::naga;

    fn parse(name: &str, src: &str) -> naga::Module {
        naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)))
    }

    fn scalar(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<Scalar> {
        match module.types[ty].inner {
            naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Uint, width: 4 }) => Some(Scalar::U32),
            naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Float, width: 4 }) => Some(Scalar::F32),
            _ => None,
        }
    }

    /// Holds `T` to the WGSL struct named `wgsl` in `module`: size, then every
    /// member's name, offset and scalar type, in order.
    fn check<T: UniformLayout>(shader: &str, module: &naga::Module, wgsl: &str) {
        let rust = std::any::type_name::<T>();
        let (_, ty) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some(wgsl)).unwrap_or_else(|| panic!("{shader}: no struct {wgsl}"));
        let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("{shader}: {wgsl} is not a struct") };
        assert_eq!(*span as usize, std::mem::size_of::<T>(), "{shader}: size of {wgsl} vs {rust}");
        let wgsl_fields: Vec<_> = members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize, scalar(module, m.ty))).collect();
        let rust_fields: Vec<_> = T::FIELDS.iter().map(|&(n, o, s)| (n.to_string(), o, Some(s))).collect();
        assert_eq!(wgsl_fields, rust_fields, "{shader}: members of {wgsl} vs {rust}");
    }

    #[test]
    fn uniform_structs_match_the_wgsl_layouts() {
        for shader in &SHADERS {
            let name = shader.name;
            let m = parse(name, &shader.source());
            check::<Step>(name, &m, "Step");
            match name {
                "rope_kv" | "attention" => check::<KvParams>(name, &m, "KvParams"),
                "embed" => check::<EmbedParams>(name, &m, "Params"),
                "norm_add" => check::<NormParams>(name, &m, "Params"),
                "quantize" => check::<QuantParams>(name, &m, "Params"),
                "matmul" => check::<MatmulParams>(name, &m, "Params"),
                "penalty" => check::<PenaltyParams>(name, &m, "Params"),
                "argmax" | "topk" => check::<VocabParams>(name, &m, "Params"),
                "probe" => {}
                other => panic!("no uniform check for the {other} kernel"),
            }
            // Every struct of a kernel's source is one of the above.
            for (_, ty) in m.types.iter() {
                if let (naga::TypeInner::Struct { .. }, Some(n)) = (&ty.inner, &ty.name) {
                    assert!(["Step", "KvParams", "Params"].contains(&n.as_str()), "{name}: struct {n} has no Rust mirror");
                }
            }
        }
    }

    /// The `tok` binding is `array<vec4<u32>>`: four u32 per token, in TokenInfo's order.
    #[test]
    fn token_info_is_a_vec4_of_u32() {
        assert_eq!(std::mem::size_of::<TokenInfo>(), 16);
        let offsets = [std::mem::offset_of!(TokenInfo, base), std::mem::offset_of!(TokenInfo, slot), std::mem::offset_of!(TokenInfo, used), std::mem::offset_of!(TokenInfo, sink_until)];
        assert_eq!(offsets, [0, 4, 8, 12]);
        for shader in SHADERS.iter().filter(|s| s.kv) {
            let name = shader.name;
            let m = parse(name, &shader.source());
            let tok = m.global_variables.iter().find(|(_, v)| v.name.as_deref() == Some("tok")).expect("a tok binding").1;
            let naga::TypeInner::Array { base, stride, .. } = m.types[tok.ty].inner else { panic!("{name}: tok is not an array") };
            assert_eq!(stride, 16, "{name}: tok stride");
            assert_eq!(
                m.types[base].inner,
                naga::TypeInner::Vector { size: naga::VectorSize::Quad, scalar: naga::Scalar { kind: naga::ScalarKind::Uint, width: 4 } },
                "{name}: tok element"
            );
        }
    }

    /// Each kernel's declared bindings (names, kinds, order) are the WGSL's
    /// `@group(0) @binding(i)` variables: the pipeline layout and every bind
    /// group are made from that declaration.
    #[test]
    fn kernel_bindings_match_the_wgsl_bindings() {
        for shader in &SHADERS {
            let name = shader.name;
            let m = parse(name, &shader.source());
            let mut wgsl: Vec<(u32, String, Bind)> = m
                .global_variables
                .iter()
                .filter_map(|(_, v)| {
                    let rb = v.binding.as_ref()?;
                    assert_eq!(rb.group, 0, "{name}: group of {:?}", v.name);
                    let kind = match v.space {
                        naga::AddressSpace::Uniform => Bind::Uniform,
                        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => Bind::ReadWrite,
                        naga::AddressSpace::Storage { .. } => Bind::Read,
                        other => panic!("{name}: {:?} in {other:?}", v.name),
                    };
                    Some((rb.binding, v.name.clone().unwrap_or_default(), kind))
                })
                .collect();
            wgsl.sort_by_key(|b| b.0);
            let rust: Vec<(u32, String, Bind)> = shader.binds.iter().enumerate().map(|(i, &(n, k))| (i as u32, n.to_string(), k)).collect();
            assert_eq!(wgsl, rust, "{name}: bindings");
        }
    }
}
