//! The llama weights from a GGUF: the own kernels' formats repacked straight from the
//! file's bytes for the own kernels (no intermediate tensor: faster, and a
//! lower peak), other types through candle; and the memory they will need,
//! computed from the header alone.

use super::{Block, Embedding, Llama, RopeTables, Workspace};
use crate::backend::cpu::quant::{QFormat, QMatrix, QK};
use crate::backend::cpu::Linear;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::block::{BlockSupport, NormPlacement};
use crate::model::config::LlamaConfig;
use crate::model::tensors::{LayerTensor, ModelTensor};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use std::sync::Arc;

/// Bytes a tensor occupies once loaded (repacked for the own kernels; F16/BF16
/// weights are widened to f32 by Linear).
fn loaded_bytes(g: &Gguf, name: &str) -> u64 {
    let (Some(dims), Some(dt)) = (g.tensor_dims(name), g.tensor_dtype(name)) else { return 0 };
    // u64 throughout: `usize` is 32 bits in wasm, and the header bounds a tensor at 2^40 elements.
    let elems = dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
    if let Some(f) = QFormat::of(dt) {
        return elems / QK as u64 * f.repacked_block_bytes() as u64;
    }
    match dt {
        GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::F32 => elems.saturating_mul(4),
        dt => elems / dt.block_size() as u64 * dt.type_size() as u64,
    }
}

/// The most file bytes held at once while a matrix is repacked from a file
/// outside memory (the browser's): whole rows up to this size.
const PIECE_BYTES: usize = 4 << 20;

/// Reads the tensors of one file for one config.
struct Reader<'a> {
    g: &'a Gguf<'a>,
    c: &'a LlamaConfig,
    device: &'a Device,
}

impl Reader<'_> {
    /// A matrix for the own kernels where its type has one, else candle's.
    fn linear(&self, name: &str, dims: &[usize]) -> Result<Linear> {
        if let Some(m) = self.own_matrix(name, dims)? {
            return Ok(Linear::Own(Arc::new(m)));
        }
        Linear::new(Arc::new(self.g.tensor(name, dims, self.device)?))
    }

    /// The `[rows, cols]` matrix repacked for the own kernels, read from the
    /// file in pieces of whole rows (a file outside memory is never held whole:
    /// the peak is the weights plus one piece); None where its type has no kernel.
    fn own_matrix(&self, name: &str, dims: &[usize]) -> Result<Option<QMatrix>> {
        let Some(format) = self.g.tensor_dtype(name).and_then(QFormat::of) else { return Ok(None) };
        let Some(mut builder) = QMatrix::builder(format, dims[0], dims[1]) else { return Ok(None) };
        let bad = || Error::Tensor { name: name.into(), reason: "its blocks do not fill whole rows".into() };
        self.g.tensor_rows(name, dims, PIECE_BYTES, |first, bytes| builder.add_rows(first, bytes).then_some(()).ok_or_else(bad))?;
        builder.finish().map(Some).ok_or_else(bad)
    }

    /// A norm weight of `n_embd` values as f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.vector_of(name, self.c.n_embd)
    }

    /// A weight vector of `n` values as f32.
    fn vector_of(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let (data, dt) = self.g.tensor_data(name, &[n])?;
        if dt == GgmlDType::F32 {
            return Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
        }
        Ok(self.g.tensor(name, &[n], self.device)?.dequantize(self.device)?.to_vec1::<f32>()?)
    }

    /// A projection's bias as f32 (`rows` values).
    fn bias(&self, t: LayerTensor, layer: usize) -> Result<Vec<f32>> {
        let rows = t.dims(self.c)[0];
        let name = t.bias_name(layer);
        let (data, dt) = self.g.tensor_data(&name, &[rows])?;
        if dt == GgmlDType::F32 {
            return Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
        }
        Ok(self.g.tensor(&name, &[rows], self.device)?.dequantize(self.device)?.to_vec1::<f32>()?)
    }

    fn layer(&self, i: usize) -> Result<Block> {
        let spec = &self.c.blocks[i];
        let mm = |t: LayerTensor| self.linear(&t.name(i), &t.dims(self.c));
        let qkv_bias = match spec.qkv_bias {
            true => Some([self.bias(LayerTensor::AttnQ, i)?, self.bias(LayerTensor::AttnK, i)?, self.bias(LayerTensor::AttnV, i)?]),
            false => None,
        };
        let norm_if = |want: bool, t: LayerTensor| -> Result<Option<Vec<f32>>> { if want { Ok(Some(self.vector_of(&t.name(i), t.dims(self.c)[0])?)) } else { Ok(None) } };
        let post = spec.norms == NormPlacement::PreAndPost;
        Ok(Block {
            qkv_bias,
            q_norm: norm_if(spec.qk_norm, LayerTensor::AttnQNorm)?,
            k_norm: norm_if(spec.qk_norm, LayerTensor::AttnKNorm)?,
            attn_post_norm: norm_if(post, LayerTensor::AttnPostNorm)?,
            ffn_post_norm: norm_if(post, LayerTensor::FfnPostNorm)?,
            attn_norm: self.vector(&LayerTensor::AttnNorm.name(i))?,
            wq: mm(LayerTensor::AttnQ)?,
            wk: mm(LayerTensor::AttnK)?,
            wv: mm(LayerTensor::AttnV)?,
            wo: mm(LayerTensor::AttnOutput)?,
            ffn_norm: self.vector(&LayerTensor::FfnNorm.name(i))?,
            w_gate: mm(LayerTensor::FfnGate)?,
            w_up: mm(LayerTensor::FfnUp)?,
            w_down: mm(LayerTensor::FfnDown)?,
        })
    }

    /// The token embedding, and the output projection when it is tied to it
    /// (no `output.weight`: the projection reuses the embedding's matrix).
    fn embedding(&self) -> Result<(Embedding, Option<Linear>)> {
        let c = self.c;
        let (name, dims) = (ModelTensor::TokenEmbedding.name(), ModelTensor::TokenEmbedding.dims(c));
        let dt = self.g.tensor_dtype(name).ok_or_else(|| Error::Tensor { name: name.into(), reason: "missing from the file".into() })?;
        if dt.block_size() > c.n_embd || !c.n_embd.is_multiple_of(dt.block_size()) {
            return Err(Error::Tensor { name: name.into(), reason: "rows are not whole blocks".into() });
        }
        let tied = !self.g.has_tensor(ModelTensor::Output.name());
        Ok(match self.own_matrix(name, &dims)? {
            Some(m) => {
                let m = Arc::new(m);
                (Embedding::Own(m.clone()), tied.then_some(Linear::Own(m)))
            }
            None => {
                let t = Arc::new(self.g.tensor(name, &dims, self.device)?);
                let out = if tied { Some(Linear::new(t.clone())?) } else { None };
                (Embedding::Candle(t), out)
            }
        })
    }
}

impl Llama {
    /// Bytes the weights of this file will need once loaded, computed from the
    /// header alone, so a model that cannot fit is refused before allocating.
    pub fn estimate_bytes(g: &Gguf, cfg: &LlamaConfig) -> u64 {
        let model = [ModelTensor::TokenEmbedding, ModelTensor::OutputNorm, ModelTensor::Output].iter().map(|t| loaded_bytes(g, t.name()));
        let layers = (0..cfg.n_layer).flat_map(|i| LayerTensor::ALL.iter().map(move |t| loaded_bytes(g, &t.name(i))));
        let biases = (0..cfg.n_layer).flat_map(|i| [LayerTensor::AttnQ, LayerTensor::AttnK, LayerTensor::AttnV].map(|t| loaded_bytes(g, &t.bias_name(i))));
        model.chain(layers).chain(biases).fold(0u64, u64::saturating_add)
    }

    pub fn load(g: &Gguf, cfg: LlamaConfig, device: &Device) -> Result<Self> {
        // This pass computes every block variant (llama, qwen2, gemma3).
        let supports = BlockSupport { post_norms: true, qk_norm: true, qkv_bias: true, gelu: true, rope_halves: true, sliding_window: true };
        for b in &cfg.blocks {
            b.check("CPU", &supports)?;
        }
        let r = Reader { g, c: &cfg, device };
        let (embed, tied_output) = r.embedding()?;
        let blocks = (0..cfg.n_layer).map(|i| r.layer(i)).collect::<Result<Vec<_>>>()?;
        let norm = r.vector(ModelTensor::OutputNorm.name())?;
        let output = match tied_output {
            Some(o) => o,
            None => r.linear(ModelTensor::Output.name(), &ModelTensor::Output.dims(&cfg))?,
        };
        let weight_bytes = usize::try_from(Self::estimate_bytes(g, &cfg)).unwrap_or(usize::MAX);
        let ropes = RopeTables::new(&cfg);
        Ok(Self { ropes, cfg, embed, blocks, norm, output, weight_bytes, ws: Workspace::default() })
    }
}
