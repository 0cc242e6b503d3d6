//! The llama-family forward pass as a straight sequence of kernels over
//! preallocated buffers: embedding, RMSNorm, RoPE, grouped-query attention
//! over the bounded [`KvCache`] (read in place), gated MLP, final norm and
//! output projection; what each block adds (Q/K/V biases, QK-norm, post-norms,
//! GELU, RoPE layout and base, a sliding window) read from its [`BlockSpec`]:
//! llama, qwen2 and gemma3 are this one pass.
//! Prefill runs whole chunks through the matrix-matrix kernels; a decode step
//! allocates nothing. candle supplies the GGUF tensors and the matmuls of weight
//! types without an own kernel.

mod load;

use super::block::{Activation, BlockSpec, RopeStyle};
use super::config::LlamaConfig;
use super::profile::{Clock, Op, PlainRead, Profile};
use super::rope::Rope;
use crate::backend::cpu::quant::{QActivations, QMatrix};
use crate::backend::cpu::linear::{self, Linear};
use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use crate::kv_cache::{AttentionWindow, AttnScratch, ColdRotations, KvCache, KvPolicy, RecallRope, Unrotate};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::sync::Arc;

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Q, K and V biases (where the block has them).
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys (QK-norm blocks).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// RMSNorms of the attention and FFN outputs before the residual add (post-norm blocks).
    attn_post_norm: Option<Vec<f32>>,
    ffn_post_norm: Option<Vec<f32>>,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// The token embedding: the own repacked matrix (shared with the output
/// projection when the model ties them) or candle's tensor for other types.
enum Embedding {
    Own(Arc<QMatrix>),
    Candle(Arc<QTensor>),
}

/// A loaded llama-family model (weights only; the cache is separate) and the
/// reusable buffers of its forward pass.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: Linear,
    ropes: RopeTables,
    weight_bytes: usize,
    ws: Workspace,
}

/// The RoPE angles of each distinct base among the layers (gemma 3: 10 000
/// for the sliding layers, the file's base for the global ones), computed
/// once per position; `ws.cos` / `ws.sin` hold them `[token][table][half]`.
struct RopeTables {
    tables: Vec<Rope>,
    /// The table of each layer.
    of_layer: Vec<usize>,
}

impl RopeTables {
    fn new(c: &LlamaConfig) -> Self {
        let mut bases: Vec<f32> = Vec::new();
        let of_layer = c
            .blocks
            .iter()
            .map(|b| match bases.iter().position(|&x| x == b.rope_base) {
                Some(i) => i,
                None => {
                    bases.push(b.rope_base);
                    bases.len() - 1
                }
            })
            .collect();
        Self { tables: bases.iter().map(|&base| Rope::new(c.head_dim, base)).collect(), of_layer }
    }

    fn len(&self) -> usize {
        self.tables.len()
    }
}

/// Every buffer the forward pass writes, grown to the largest chunk seen and
/// then reused: a decode step allocates nothing.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    q_sink: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    sink_cos: Vec<f32>,
    sink_sin: Vec<f32>,
    /// With a cold tier: the queries before RoPE (`[t][qd]`, for choosing
    /// blocks), the angles of the position each token evicts (sines negated,
    /// `[t][table][half]`), and those of the recall rows' in-cache positions
    /// (`[table][row][half]`, computed once for `recall_for`).
    q_raw: Vec<f32>,
    evict_cos: Vec<f32>,
    evict_neg_sin: Vec<f32>,
    recall_cos: Vec<f32>,
    recall_sin: Vec<f32>,
    recall_for: Option<(usize, usize)>,
    logits: Vec<f32>,
    positions: Vec<usize>,
    act: QActivations,
    scratch: AttnScratch,
    profile: Option<Profile>,
}


fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Llama {
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Starts (or stops) timing every operation of the forward pass.
    /// Switching on also times one plain read of the matmuls' weights ([`PlainRead`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.ws.profile = on.then(|| Profile { plain_read: Some(PlainRead::measure(|| self.read_weights_once())), ..Profile::default() });
    }

    /// Every weight a token's matmuls read (the output projection's and the
    /// blocks'), read once by as many threads as the matmuls use, each taking
    /// the next matrix: `(bytes, their fold)`.
    fn read_weights_once(&self) -> (usize, u64) {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let blocks = self.blocks.iter().flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]);
        let linears: Vec<&Linear> = [&self.output].into_iter().chain(blocks).collect();
        let (bytes, fold) = (AtomicUsize::new(0), AtomicU64::new(0));
        crate::backend::cpu::par_for(crate::backend::cpu::threads(), linears.len(), &|i| {
            let (b, f) = linears[i].read_once();
            bytes.fetch_add(b, Ordering::Relaxed);
            fold.fetch_xor(f, Ordering::Relaxed);
        });
        (bytes.into_inner(), fold.into_inner())
    }
    /// Charges `secs` to `op` when profiling (the engine times sampling).
    pub fn profile_add(&mut self, op: Op, secs: f64) {
        if let Some(p) = &mut self.ws.profile {
            p.add(op, secs);
        }
    }
    /// Time per operation kind since profiling was switched on.
    pub fn profile(&self) -> Option<&Profile> {
        self.ws.profile.as_ref()
    }

    /// Runs one chunk of tokens (planned with [`KvCache::next_chunk`]) through the
    /// network, appending them to the cache. Returns the logits, `T` rows of
    /// `vocab` when `all_logits`, else one row for the last token.
    pub fn forward(&mut self, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<&[f32]> {
        let t = ids.len();
        if t == 0 || t != cache.next_chunk(t) {
            return Err(Error::Backend(format!("chunk of {t} tokens does not fit the cache plan")));
        }
        self.run(ids, &mut [cache], false, all_logits)
    }

    /// One decode step for a batch of sequences: token `ids[j]` is the next
    /// token of the sequence whose cache is `caches[j]`. The matmuls take all
    /// rows at once (the weights are read once per step for the whole batch);
    /// each row attends over its own cache. Returns one row of logits per sequence.
    pub fn forward_batch(&mut self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<&[f32]> {
        if ids.is_empty() || ids.len() != caches.len() {
            return Err(Error::Backend(format!("{} tokens for {} sequences", ids.len(), caches.len())));
        }
        self.run(ids, caches, true, true)
    }

    /// The forward pass over `ids`: a chunk of one sequence (`batch` false:
    /// `caches[0]`, consecutive positions) or one token per sequence (`batch` true).
    fn run(&mut self, ids: &[u32], caches: &mut [&mut KvCache], batch: bool, all_logits: bool) -> Result<&[f32]> {
        let t = ids.len();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        let n0 = caches[0].len();
        let mut positions = std::mem::take(&mut self.ws.positions);
        positions.clear();
        positions.extend((0..t).map(|j| if batch { caches[j].len() } else { n0 + j }));
        self.ws.grow(t, &self.cfg, self.ropes.len());
        let mut clock = Clock::start(self.ws.profile.is_some());
        let r = self.layers(ids, &positions, caches, batch, &mut clock);
        self.ws.positions = positions;
        r?;
        if batch {
            for (cache, id) in caches.iter_mut().zip(ids) {
                cache.commit(std::slice::from_ref(id));
            }
        } else {
            caches[0].commit(ids);
        }
        let rows = self.output(t, all_logits, &mut clock)?;
        Ok(&self.ws.logits[..rows * self.cfg.vocab_size])
    }

    /// The embedding, then every block, leaving the residual stream in `ws.x`.
    fn layers(&mut self, ids: &[u32], positions: &[usize], caches: &mut [&mut KvCache], batch: bool, clock: &mut Clock) -> Result<()> {
        self.embed(ids, positions, caches[0].policy())?;
        clock.lap(&mut self.ws.profile, Op::Other);
        let t = ids.len();
        for (i, b) in self.blocks.iter().enumerate() {
            let spec = &self.cfg.blocks[i];
            let rope = (self.ropes.of_layer[i], self.ropes.len());
            attention(&self.cfg, b, i, rope, &mut self.ws, t, positions, caches, batch, clock)?;
            feed_forward(&self.cfg, spec, b, &mut self.ws, t, clock)?;
        }
        Ok(())
    }

    /// Embedding rows of `ids` into `ws.x` (scaled where the model says), and
    /// the rotation tables of this chunk's positions (and of the in-cache
    /// position seen from the sinks; with a cold tier, of the positions
    /// leaving the window and of the recall rows), for each RoPE base.
    fn embed(&mut self, ids: &[u32], positions: &[usize], policy: &KvPolicy) -> Result<()> {
        let sink_position = policy.sink_query_position();
        let (e, half, n) = (self.cfg.n_embd, self.cfg.head_dim / 2, self.ropes.len());
        let ws = &mut self.ws;
        for (j, &id) in ids.iter().enumerate() {
            let row = &mut ws.x[j * e..(j + 1) * e];
            match &self.embed {
                Embedding::Own(m) => m.dequantize_row(id as usize, row),
                Embedding::Candle(q) => {
                    let ids_t = Tensor::new(&[id], &Device::Cpu)?;
                    row.copy_from_slice(&q.embedding(&ids_t)?.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            if self.cfg.embedding_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= self.cfg.embedding_scale);
            }
            for (r, rope) in self.ropes.tables.iter().enumerate() {
                let at = (j * n + r) * half..(j * n + r + 1) * half;
                rope.angles(positions[j], &mut ws.cos[at.clone()], &mut ws.sin[at]);
            }
        }
        grow(&mut ws.sink_cos, n * half);
        grow(&mut ws.sink_sin, n * half);
        for (r, rope) in self.ropes.tables.iter().enumerate() {
            rope.angles(sink_position, &mut ws.sink_cos[r * half..(r + 1) * half], &mut ws.sink_sin[r * half..(r + 1) * half]);
        }
        if policy.config().cold.is_some() {
            self.cold_angles(positions, policy);
        }
        Ok(())
    }

    /// The angles the cold tier rotates with (see `Workspace::q_raw`).
    fn cold_angles(&mut self, positions: &[usize], policy: &KvPolicy) {
        let (half, n) = (self.cfg.head_dim / 2, self.ropes.len());
        let ws = &mut self.ws;
        let (sinks, rows) = (policy.sinks(), policy.recall_rows());
        grow(&mut ws.evict_cos, positions.len() * n * half);
        grow(&mut ws.evict_neg_sin, positions.len() * n * half);
        for (j, &p) in positions.iter().enumerate() {
            let Some(leaving) = policy.plan(p).evicts else { continue };
            for (r, rope) in self.ropes.tables.iter().enumerate() {
                let at = (j * n + r) * half..(j * n + r + 1) * half;
                rope.angles(leaving, &mut ws.evict_cos[at.clone()], &mut ws.evict_neg_sin[at.clone()]);
                ws.evict_neg_sin[at].iter_mut().for_each(|s| *s = -*s);
            }
        }
        if ws.recall_for != Some((sinks, rows)) {
            ws.recall_cos.resize(n * rows * half, 0.0);
            ws.recall_sin.resize(n * rows * half, 0.0);
            for (r, rope) in self.ropes.tables.iter().enumerate() {
                for row in 0..rows {
                    let at = (r * rows + row) * half..(r * rows + row + 1) * half;
                    rope.angles(sinks + row, &mut ws.recall_cos[at.clone()], &mut ws.recall_sin[at]);
                }
            }
            ws.recall_for = Some((sinks, rows));
        }
    }

    /// The final norm and the output projection of the wanted rows; returns how many rows.
    fn output(&mut self, t: usize, all_logits: bool, clock: &mut Clock) -> Result<usize> {
        let (e, eps, vocab) = (self.cfg.n_embd, self.cfg.rms_eps, self.cfg.vocab_size);
        let ws = &mut self.ws;
        let first = if all_logits { 0 } else { t - 1 };
        let rows = t - first;
        for j in first..t {
            let r = j - first;
            ops::rms_norm(&ws.x[j * e..(j + 1) * e], &self.norm, eps, &mut ws.h[r * e..(r + 1) * e]);
        }
        clock.lap(&mut ws.profile, Op::Norm);
        grow(&mut ws.logits, rows * vocab);
        self.output.forward_into(&ws.h[..rows * e], rows, &mut ws.act, &mut ws.logits[..rows * vocab])?;
        clock.lap(&mut ws.profile, Op::MatmulOutput);
        if let Some(p) = &mut ws.profile {
            p.tokens += t;
        }
        Ok(rows)
    }
}

/// The attention half of block `i`: norm, Q/K/V projections (biases,
/// QK-norm), RoPE with the layer's table `rope.0` of `rope.1`, attention over
/// each row's cache in the layer's window (its plan says whether the query
/// needs its second rotation for the sinks), the output projection
/// (post-normed) added to the residual.
#[allow(clippy::too_many_arguments)]
fn attention(c: &LlamaConfig, b: &Block, i: usize, rope: (usize, usize), ws: &mut Workspace, t: usize, positions: &[usize], caches: &mut [&mut KvCache], batch: bool, clock: &mut Clock) -> Result<()> {
    let (hd, eps, e) = (c.head_dim, c.rms_eps, c.n_embd);
    let (qd, kvd, half) = (c.n_head * hd, c.n_head_kv * hd, hd / 2);
    let spec = &c.blocks[i];
    let rotate = spec.rope_style;
    for j in 0..t {
        ops::rms_norm(&ws.x[j * e..(j + 1) * e], &b.attn_norm, eps, &mut ws.h[j * e..(j + 1) * e]);
    }
    clock.lap(&mut ws.profile, Op::Norm);
    let qkv = [(&b.wq, &mut ws.q[..t * qd]), (&b.wk, &mut ws.k[..t * kvd]), (&b.wv, &mut ws.v[..t * kvd])];
    linear::forward_many(qkv, &ws.h[..t * e], t, &mut ws.act)?;
    if let Some([bq, bk, bv]) = &b.qkv_bias {
        ops::add_rows(&mut ws.q[..t * qd], bq);
        ops::add_rows(&mut ws.k[..t * kvd], bk);
        ops::add_rows(&mut ws.v[..t * kvd], bv);
    }
    clock.lap(&mut ws.profile, Op::MatmulQkv);
    if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
        ws.q[..t * qd].chunks_exact_mut(hd).for_each(|head| ops::rms_norm_in_place(head, qn, eps));
        ws.k[..t * kvd].chunks_exact_mut(hd).for_each(|head| ops::rms_norm_in_place(head, kn, eps));
        clock.lap(&mut ws.profile, Op::Norm);
    }
    let (table, tables) = rope;
    let cold = spec.window == AttentionWindow::Global && caches[0].has_cold();
    if cold {
        grow(&mut ws.q_raw, t * qd);
        ws.q_raw[..t * qd].copy_from_slice(&ws.q[..t * qd]);
    }
    for j in 0..t {
        // A chunk recalls every `RECALL_EVERY` tokens (a batch, one token per cache, once).
        if cold && (if batch { j == 0 } else { j % RECALL_EVERY == 0 }) {
            let rows = if batch { 0..t } else { j..t.min(j + RECALL_EVERY) };
            recall(caches, i, ws, rows, positions, qd, rotate, (table, half), batch);
            clock.lap(&mut ws.profile, Op::KvRecall);
        }
        let (sink_cos, sink_sin) = (&ws.sink_cos[table * half..(table + 1) * half], &ws.sink_sin[table * half..(table + 1) * half]);
        let cache = &mut *caches[if batch { j } else { 0 }];
        let at = (j * tables + table) * half..(j * tables + table + 1) * half;
        let (cos, sin) = (&ws.cos[at.clone()], &ws.sin[at]);
        let q = &mut ws.q[j * qd..(j + 1) * qd];
        let plan = cache.plan_in(spec.window, positions[j]);
        if plan.rotates_sink_query() {
            ws.q_sink[..qd].copy_from_slice(q);
            for head in ws.q_sink[..qd].chunks_exact_mut(hd) {
                rotate.rotate(head, sink_cos, sink_sin);
            }
        }
        for head in q.chunks_exact_mut(hd) {
            rotate.rotate(head, cos, sin);
        }
        for head in ws.k[j * kvd..(j + 1) * kvd].chunks_exact_mut(hd) {
            rotate.rotate(head, cos, sin);
        }
        clock.lap(&mut ws.profile, Op::Rope);
        let q_sink: &[f32] = if plan.rotates_sink_query() { &ws.q_sink[..qd] } else { &[] };
        let (q, k, v) = (&ws.q[j * qd..(j + 1) * qd], &ws.k[j * kvd..(j + 1) * kvd], &ws.v[j * kvd..(j + 1) * kvd]);
        let at = (j * tables + table) * half..(j * tables + table + 1) * half;
        let unrotate = plan.evicts.map(|_| Unrotate { rotate, cos: ws.evict_cos.get(at.clone()).unwrap_or(&[]), neg_sin: ws.evict_neg_sin.get(at).unwrap_or(&[]) });
        let rotations = cold.then(|| ColdRotations { unrotate, recall: recall_rope(cache, (&ws.recall_cos, &ws.recall_sin), rotate, (table, half)) });
        cache.attend(i, plan, q, q_sink, k, v, rotations.as_ref(), &mut ws.scratch, &mut ws.attn[j * qd..(j + 1) * qd]);
        clock.lap(&mut ws.profile, Op::Attention);
    }
    b.wo.forward_into(&ws.attn[..t * qd], t, &mut ws.act, &mut ws.o[..t * e])?;
    clock.lap(&mut ws.profile, Op::MatmulO);
    add_residual(&mut ws.x[..t * e], &mut ws.o[..t * e], b.attn_post_norm.as_deref(), eps, e);
    Ok(())
}

/// Tokens of a chunk that share one recall. Four: GPL-3's perplexity through
/// window 512 + recall 512 (full cache 17.970), with a 5% hold margin, is
/// 18.541 recalling every 32 tokens, 18.485 every 8, 18.351 every token; with
/// the 1% margin, 18.339 every 8, 18.276 every 4, 18.271 every token. Scoring
/// is one pass over the blocks' summaries, so recalling often costs little.
const RECALL_EVERY: usize = 4;

/// Recall for layer `i` (a global layer of caches with a cold tier): the
/// queries before RoPE of the chunk's `rows` choose the cold blocks (one
/// cache per row in a batch), rotated at the recall rows' positions of the
/// layer's RoPE table (`table.0` of half-size `table.1`).
#[allow(clippy::too_many_arguments)]
fn recall(caches: &mut [&mut KvCache], i: usize, ws: &Workspace, rows: std::ops::Range<usize>, positions: &[usize], qd: usize, rotate: RopeStyle, table: (usize, usize), batch: bool) {
    let rope = recall_rope(caches[0], (&ws.recall_cos, &ws.recall_sin), rotate, table);
    if batch {
        for (j, cache) in caches.iter_mut().enumerate() {
            cache.recall(i, positions[j], &ws.q_raw[j * qd..(j + 1) * qd], qd, &rope);
        }
    } else {
        caches[0].recall(i, positions[rows.start], &ws.q_raw[rows.start * qd..rows.end * qd], qd, &rope);
    }
}

/// The recall rows' rotations of the layer's RoPE table (`table.0` of half-size `table.1`).
fn recall_rope<'a>(cache: &KvCache, (cos, sin): (&'a [f32], &'a [f32]), rotate: RopeStyle, (table, half): (usize, usize)) -> RecallRope<'a> {
    let rows = cache.recall_rows();
    let span = table * rows * half..(table + 1) * rows * half;
    RecallRope { rotate, cos: &cos[span.clone()], sin: &sin[span] }
}

/// `x += out`, `out` RMS-normed first (in place, per token of `e` values) where the block post-norms.
fn add_residual(x: &mut [f32], out: &mut [f32], post_norm: Option<&[f32]>, eps: f32, e: usize) {
    if let Some(w) = post_norm {
        out.chunks_exact_mut(e).for_each(|row| ops::rms_norm_in_place(row, w, eps));
    }
    ops::add_assign(x, out);
}

/// The FFN half of a block: norm, gate and up projections, the block's
/// activation, the down projection added to the residual.
fn feed_forward(c: &LlamaConfig, spec: &BlockSpec, b: &Block, ws: &mut Workspace, t: usize, clock: &mut Clock) -> Result<()> {
    let (e, ff, eps) = (c.n_embd, c.n_ff, c.rms_eps);
    for j in 0..t {
        ops::rms_norm(&ws.x[j * e..(j + 1) * e], &b.ffn_norm, eps, &mut ws.h[j * e..(j + 1) * e]);
    }
    clock.lap(&mut ws.profile, Op::Norm);
    let gate_up = [(&b.w_gate, &mut ws.gate[..t * ff]), (&b.w_up, &mut ws.up[..t * ff])];
    linear::forward_many(gate_up, &ws.h[..t * e], t, &mut ws.act)?;
    clock.lap(&mut ws.profile, Op::MatmulGateUp);
    match spec.activation {
        Activation::Silu => ops::silu_mul(&mut ws.gate[..t * ff], &ws.up[..t * ff]),
        Activation::GeluTanh => ops::gelu_mul(&mut ws.gate[..t * ff], &ws.up[..t * ff]),
    }
    clock.lap(&mut ws.profile, Op::Other);
    b.w_down.forward_into(&ws.gate[..t * ff], t, &mut ws.act, &mut ws.o[..t * e])?;
    clock.lap(&mut ws.profile, Op::MatmulDown);
    add_residual(&mut ws.x[..t * e], &mut ws.o[..t * e], b.ffn_post_norm.as_deref(), eps, e);
    Ok(())
}

impl Workspace {
    /// Grows every buffer to a chunk of `t` tokens (never shrinks); `tables` RoPE tables.
    fn grow(&mut self, t: usize, c: &LlamaConfig, tables: usize) {
        let (hd, e, ff) = (c.head_dim, c.n_embd, c.n_ff);
        let (qd, kvd, half) = (c.n_head * hd, c.n_head_kv * hd, hd / 2);
        for (v, n) in [(&mut self.x, t * e), (&mut self.h, t * e), (&mut self.o, t * e), (&mut self.q, t * qd), (&mut self.q_sink, qd), (&mut self.attn, t * qd)] {
            grow(v, n);
        }
        for (v, n) in [(&mut self.k, t * kvd), (&mut self.v, t * kvd), (&mut self.gate, t * ff), (&mut self.up, t * ff), (&mut self.cos, t * tables * half), (&mut self.sin, t * tables * half)] {
            grow(v, n);
        }
    }
}
