//! The CPU's K/V storage: one K and one V buffer per layer,
//! `[n_kv, cap, head_dim]` (`cap` the configured window, or the layer's
//! sliding window), allocated once (memory never grows), in f32 or
//! f16; and one layer's attention of one token read from it in place (the
//! loops per instruction set are in `backend::cpu::attention`). Where a token
//! goes and what its query sees comes from the [`PositionPlan`].

use super::cold::{ColdLayer, ColdStats, BLOCK};
use super::recalled::{RecallRope, RecalledRows};
use super::image::{ImageReader, ImageWriter};
use super::policy::PositionPlan;
use super::{AttentionWindow, KvCacheConfig, KvDType};
use crate::backend::cpu::attention::{attend_heads, Bf16Keys, GroupArgs, Rows, ValueCodes};
use crate::backend::cpu::ops::{self, RopeStyle};
use crate::error::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Preallocated storage of one layer's keys or values, `[n_kv, capacity, head_dim]`.
enum Store {
    F32(Vec<f32>),
    /// `special`: some value ever written was inf or NaN (the fast conversion then is not exact).
    F16 { data: Vec<f16>, special: bool },
}

impl Store {
    fn new(dtype: KvDType, n: usize) -> Self {
        match dtype {
            KvDType::F32 => Store::F32(vec![0.0; n]),
            KvDType::F16 => Store::F16 { data: vec![f16::ZERO; n], special: false },
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Store::F32(s) => s[at..at + x.len()].copy_from_slice(x),
            Store::F16 { data, special } => {
                let d = &mut data[at..at + x.len()];
                d.convert_from_f32_slice(x);
                *special |= d.iter().any(|h| !h.is_finite());
            }
        }
    }

    fn copy_span(&mut self, src: &Store, span: std::ops::Range<usize>) {
        match (self, src) {
            (Store::F32(d), Store::F32(s)) => d[span.clone()].copy_from_slice(&s[span]),
            (Store::F16 { data: d, special: ds }, Store::F16 { data: s, special: ss }) => {
                d[span.clone()].copy_from_slice(&s[span]);
                *ds |= *ss;
            }
            _ => {} // impossible: copy_from checks that the configurations (and so the types) match
        }
    }

    fn write_image(&self, w: &mut ImageWriter, span: std::ops::Range<usize>) {
        match self {
            Store::F32(s) => w.f32s(&s[span]),
            Store::F16 { data, special } => {
                w.f16s(&data[span]);
                w.len(*special as usize);
            }
        }
    }

    fn read_image(&mut self, r: &mut ImageReader, span: std::ops::Range<usize>) -> Result<()> {
        match self {
            Store::F32(s) => r.f32s(&mut s[span], "keys or values"),
            Store::F16 { data, special } => {
                r.f16s(&mut data[span], "keys or values")?;
                *special |= r.u64("the f16 flag")? != 0;
                Ok(())
            }
        }
    }

    /// The values in `span` as f32 (converted into `tmp` for f16 storage).
    fn rows<'a>(&'a self, span: std::ops::Range<usize>, tmp: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Store::F32(s) => &s[span],
            Store::F16 { data, special } => {
                tmp.resize(span.len(), 0.0);
                ops::f16_to_f32_slice(&data[span], tmp, !*special);
                &tmp[..]
            }
        }
    }

    /// [`rows`](Self::rows) for `rows` rows of `hd` from `first`, where `tmp`
    /// already holds the first `kept` of them as they are now (f16 storage):
    /// only the rest and row `fresh` (the slot just written) are converted.
    fn rows_since<'a>(&'a self, first: usize, rows: usize, hd: usize, kept: usize, fresh: usize, tmp: &'a mut Vec<f32>) -> &'a [f32] {
        let Store::F16 { data, special } = self else { return self.rows(first..first + rows * hd, tmp) };
        tmp.resize(rows * hd, 0.0);
        let kept = kept.min(rows);
        let convert = |from: usize, to: usize, tmp: &mut Vec<f32>| {
            ops::f16_to_f32_slice(&data[first + from * hd..first + to * hd], &mut tmp[from * hd..to * hd], !*special);
        };
        convert(kept, rows, tmp);
        if fresh < kept {
            convert(fresh, fresh + 1, tmp);
        }
        &tmp[..]
    }
}

/// A number for each change to a layer's stored keys and values, never the
/// same twice in the process (across every cache), so that a converted copy
/// of them can tell whether it is still current.
fn change_stamp() -> u64 {
    static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}


/// One layer's keys and values, `[n_kv, cap, head_dim]` each.
struct LayerCache {
    k: Store,
    v: Store,
    /// Slots per kv head: the configured window, or the layer's sliding window.
    cap: usize,
    local: bool,
    /// The compressed tier behind the window (global layers, when configured).
    cold: Option<ColdLayer>,
    /// The last change to `k` and `v` ([`change_stamp`]).
    stamp: u64,
}

/// The inverse rotation of the key leaving the window while a token is
/// attended: its layer's RoPE, the cosines of the leaving position's angles
/// and their sines negated.
pub struct Unrotate<'a> {
    pub rotate: RopeStyle,
    pub cos: &'a [f32],
    pub neg_sin: &'a [f32],
}

/// The rotations a global layer's cold tier needs while a token is attended.
pub struct ColdRotations<'a> {
    /// The key leaving the window (when one leaves).
    pub unrotate: Option<Unrotate<'a>>,
    /// Where recalled keys go.
    pub recall: RecallRope<'a>,
}

/// Reusable buffers for [`KvStorage::attend`] (nothing is allocated per token
/// once they have grown to the cache's size).
#[derive(Default)]
pub struct AttnScratch {
    q: Vec<f32>,
    q_sink: Vec<f32>,
    groups: Vec<GroupScratch>,
}

/// One kv head's buffers (each may run on its own thread).
#[derive(Default)]
struct GroupScratch {
    scores: Vec<f32>,
    /// An f16 cache's rows of this kv head converted to f32: the first
    /// `converted.1` of the layer whose stores' stamp was `converted.0`. The
    /// tokens of a prefill chunk attend one layer in turn, each writing one
    /// slot: the next token converts only that slot and the rows it adds.
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    converted: (u64, usize),
}

impl AttnScratch {
    fn prepare(&mut self, q: &[f32], q_sink: &[f32], n_kv: usize, scores: usize, f16: bool) {
        self.q.clear();
        self.q.extend_from_slice(q);
        self.q_sink.clear();
        self.q_sink.extend_from_slice(if q_sink.is_empty() { q } else { q_sink });
        if f16 {
            // With f16 storage the queries and the attention weights are rounded to
            // f16 too, as ggml does when it multiplies by an f16 cache (llama.cpp's
            // default): the f16 cache then reproduces llama.cpp's numerics.
            ops::round_f16(&mut self.q);
            ops::round_f16(&mut self.q_sink);
        }
        self.groups.resize_with(n_kv.max(self.groups.len()), GroupScratch::default);
        for g in &mut self.groups {
            if g.scores.len() < scores {
                g.scores.resize(scores, 0.0);
            }
        }
    }
}

/// A pointer handed to the threads of one attention call, each using its own part.
struct SyncPtr<T>(*mut T);
// SAFETY: see the single use in `attend`: disjoint parts per thread.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// See the module documentation.
pub struct KvStorage {
    layers: Vec<LayerCache>,
    dtype: KvDType,
    n_kv: usize,
    head_dim: usize,
    /// The recalled rows of the layer being computed (with a cold tier).
    recalled: Option<RecalledRows>,
    loads: Vec<(usize, usize)>,
    /// The slots a recall loaded, `(kv head, slot)`.
    changed: Vec<(usize, usize)>,
    gather: Vec<f32>,
    /// The layer the last [`attend`](Self::attend) read: the next token of a
    /// prefill chunk finds that layer's rows in the CPU's caches.
    last_attended: Option<usize>,
}

impl KvStorage {
    /// One store per layer, sized by its window (`windows[i]` for layer `i`).
    pub fn new(cfg: KvCacheConfig, windows: &[AttentionWindow], n_kv: usize, head_dim: usize) -> Result<Self> {
        let layers = windows
            .iter()
            .map(|w| {
                let (cap, local) = match *w {
                    AttentionWindow::Global => (cfg.window, false),
                    AttentionWindow::Sliding(n) => (n, true),
                };
                let cold = cfg.cold.filter(|_| !local);
                let n = n_kv.checked_mul(cap).and_then(|v| v.checked_mul(head_dim)).ok_or_else(|| Error::InvalidOption("kv cache size overflows".into()))?;
                let cold = cold.map(|c| ColdLayer::new(c, n_kv, head_dim));
                Ok(LayerCache { k: Store::new(cfg.dtype, n), v: Store::new(cfg.dtype, n), cap, local, cold, stamp: change_stamp() })
            })
            .collect::<Result<Vec<_>>>()?;
        let cold: Vec<bool> = layers.iter().map(|l| l.cold.is_some()).collect();
        let recalled = cfg.cold.filter(|_| cold.contains(&true)).map(|c| RecalledRows::new(&cold, n_kv, c.recall_rows(), head_dim));
        Ok(Self { layers, dtype: cfg.dtype, n_kv, head_dim, recalled, loads: Vec::new(), changed: Vec::new(), gather: Vec::new(), last_attended: None })
    }

    /// The cold tier's occupancy after `len` tokens (`None` without one).
    pub fn cold_stats(&self, len: usize) -> Option<ColdStats> {
        let (first, cap) = self.layers.iter().find_map(|l| l.cold.as_ref().map(|c| (c, l.cap)))?;
        let left = len.saturating_sub(cap);
        let stored = first.stored(left);
        Some(ColdStats {
            capacity: first.stored(usize::MAX).len() * BLOCK,
            used: stored.len() * BLOCK,
            bytes: self.layers.iter().filter_map(|l| l.cold.as_ref()).map(|c| c.bytes()).sum(),
            evicted: stored.start * BLOCK,
            recalled_tokens: first.filled() * BLOCK,
            loads: self.layers.iter().filter_map(|l| l.cold.as_ref()).map(|c| c.loads()).sum(),
        })
    }

    /// Bytes held by the preallocated K/V buffers.
    pub fn bytes(&self) -> usize {
        let (global, local) = self.bytes_by_kind();
        global + local
    }

    /// Bytes of the global layers' buffers (with the recalled rows) and of the sliding layers'.
    pub fn bytes_by_kind(&self) -> (usize, usize) {
        let per_slot = 2 * self.n_kv * self.head_dim * self.dtype.size();
        let sum = |local: bool| -> usize { self.layers.iter().filter(|l| l.local == local).map(|l| l.cap * per_slot).sum() };
        (sum(false) + self.recalled.as_ref().map_or(0, |r| r.bytes()), sum(true))
    }

    /// Copies the keys and values `other` holds after `len` tokens (same shape):
    /// each layer's first `min(len, cap)` slots.
    pub fn copy_slots_from(&mut self, other: &KvStorage, len: usize) -> Result<()> {
        let caps = |s: &KvStorage| s.layers.iter().map(|l| (l.cap, l.cold.is_some())).collect::<Vec<_>>();
        if (other.dtype, other.n_kv, other.head_dim, caps(other)) != (self.dtype, self.n_kv, self.head_dim, caps(self)) {
            return Err(Error::Backend("copy between caches of different shapes".into()));
        }
        let hd = self.head_dim;
        if let Some(r) = &mut self.recalled {
            r.forget();
        }
        for (dst, src) in self.layers.iter_mut().zip(&other.layers) {
            let (cap, used) = (dst.cap, len.min(dst.cap));
            if let Some(cold) = &mut dst.cold {
                cold.forget_slots();
            }
            for g in 0..self.n_kv {
                let span = g * cap * hd..(g * cap + used) * hd;
                dst.k.copy_span(&src.k, span.clone());
                dst.v.copy_span(&src.v, span);
            }
            dst.stamp = change_stamp();
        }
        Ok(())
    }

    /// The keys `kv head` groups of `queries` (un-rotated, `[t][n_head × head_dim]`)
    /// need from layer `layer`'s cold tier: each kv head's recall slots
    /// chosen, then every block they hold dequantized into the recalled rows
    /// (see `recalled`), its keys rotated at the in-cache positions of its
    /// recall slot. `len` is the cache's length before the chunk. Nothing for
    /// layers without a cold tier.
    pub fn recall(&mut self, layer: usize, len: usize, queries: &[f32], qd: usize, rope: &RecallRope) {
        let (n_kv, f16) = (self.n_kv, self.dtype == KvDType::F16);
        let Self { layers, recalled, loads, changed, gather: group_q, .. } = self;
        let lc = &mut layers[layer];
        let (Some(cold), Some(recalled)) = (&mut lc.cold, recalled) else { return };
        let stored = cold.stored(len.saturating_sub(lc.cap));

        let group = qd / n_kv;
        changed.clear();
        for g in 0..n_kv {
            group_q.clear();
            for row in queries.chunks_exact(qd) {
                group_q.extend_from_slice(&row[g * group..(g + 1) * group]);
            }
            cold.select(g, group_q, stored.clone(), len, loads);
            changed.extend(loads.iter().map(|&(slot, _)| (g, slot)));
        }
        recalled.fill(layer, cold, rope, f16, changed);
    }

    /// Moves the key and value in `plan`'s slot (absolute position
    /// `leaving`) into the layer's cold tier before they are overwritten: the
    /// key un-rotated, the block sealed once it is complete.
    fn move_to_cold(&mut self, layer: usize, slot: usize, leaving: usize, sinks: usize, unrotate: &Unrotate) {
        let (hd, n_kv) = (self.head_dim, self.n_kv);
        let Self { layers, gather, .. } = self;
        let lc = &mut layers[layer];
        let Some(cold) = &mut lc.cold else { return };
        let index = leaving - sinks;
        let (pk, pv) = cold.pending_rows(index);
        for g in 0..n_kv {
            let span = (g * lc.cap + slot) * hd..(g * lc.cap + slot + 1) * hd;
            let key = &mut pk[g * hd..(g + 1) * hd];
            key.copy_from_slice(lc.k.rows(span.clone(), gather));
            unrotate.rotate.rotate(key, unrotate.cos, unrotate.neg_sin);
            pv[g * hd..(g + 1) * hd].copy_from_slice(lc.v.rows(span, gather));
        }
        cold.seal_if_complete(index);
    }

    /// Writes what the cache holds after `len` tokens: each layer's cold
    /// store (with its recall slots) and slots in use (see `image`).
    pub fn write_image(&self, w: &mut ImageWriter, len: usize) {
        for lc in &self.layers {
            if let Some(cold) = &lc.cold {
                cold.write_image(w, len.saturating_sub(lc.cap));
            }
        }
        for (lc, span) in self.layers.iter().flat_map(|lc| self.spans(lc, len).map(move |s| (lc, s))) {
            lc.k.write_image(w, span.clone());
            lc.v.write_image(w, span);
        }
    }

    /// Reads what [`write_image`](Self::write_image) wrote for a cache of `len` tokens.
    pub fn read_image(&mut self, r: &mut ImageReader, len: usize) -> Result<()> {
        for lc in &mut self.layers {
            let cap = lc.cap;
            if let Some(cold) = &mut lc.cold {
                cold.read_image(r, len.saturating_sub(cap))?;
            }
        }
        let spans: Vec<Vec<_>> = self.layers.iter().map(|lc| self.spans(lc, len).collect()).collect();
        for (lc, spans) in self.layers.iter_mut().zip(spans) {
            lc.stamp = change_stamp();
            for span in spans {
                lc.k.read_image(r, span.clone())?;
                lc.v.read_image(r, span)?;
            }
        }
        // The next recall dequantizes what the restored slots hold.
        if let Some(r) = &mut self.recalled {
            r.forget();
        }
        Ok(())
    }

    /// Which cold blocks the last step recalled: `(block id, number of
    /// (layer, kv head) pairs holding it)`, by block id.
    pub fn recall_map(&self) -> Vec<(usize, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for id in self.layers.iter().filter_map(|l| l.cold.as_ref()).flat_map(|c| c.held()) {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// Empties every recall slot (a failed restore).
    pub fn forget_recalls(&mut self) {
        self.layers.iter_mut().filter_map(|l| l.cold.as_mut()).for_each(|c| c.forget_slots());
        if let Some(r) = &mut self.recalled {
            r.forget();
        }
    }

    /// A layer's element ranges in use after `len` tokens: per kv head, the
    /// window's slots in use.
    fn spans<'a>(&self, lc: &'a LayerCache, len: usize) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
        let (hd, used) = (self.head_dim, len.min(lc.cap));
        (0..self.n_kv).map(move |g| g * lc.cap * hd..(g * lc.cap + used) * hd)
    }

    /// Attention of one layer for one token placed by `plan`:
    ///
    /// * `q`: `[n_head * head_dim]`, rotated at the token's position;
    /// * `q_sink`: the same query rotated at the in-cache position, used for the
    ///   sinks when [`PositionPlan::rotates_sink_query`] (else empty);
    /// * `k`, `v`: `[n_kv * head_dim]`, the key rotated at the token's position.
    ///
    /// The key and value are written into their slot first (evicting the
    /// oldest ring entry once the cache is full: exactly the key that falls out
    /// of this token's window), then the query attends over every slot in use,
    /// in place. Later tokens of a chunk are not in the cache yet, so a chunk is
    /// causal without a mask. Writes `[n_head * head_dim]` to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(&mut self, layer: usize, plan: PositionPlan, q: &[f32], q_sink: &[f32], k: &[f32], v: &[f32], cold: Option<&ColdRotations>, scratch: &mut AttnScratch, out: &mut [f32]) {
        let (hd, n_kv, cap) = (self.head_dim, self.n_kv, self.layers[layer].cap);
        let n_head = q.len() / hd;
        let n_rep = n_head / n_kv;
        if let (Some(leaving), Some(unrotate)) = (plan.evicts, cold.and_then(|c| c.unrotate.as_ref())) {
            self.move_to_cold(layer, plan.slot, leaving, plan.sink_until, unrotate);
        }
        let lc = &mut self.layers[layer];
        for g in 0..n_kv {
            let at = (g * cap + plan.slot) * hd;
            lc.k.write(at, &k[g * hd..(g + 1) * hd]);
            lc.v.write(at, &v[g * hd..(g + 1) * hd]);
        }
        let before = std::mem::replace(&mut lc.stamp, change_stamp());
        // Recalled rows join the window's once it is full; `recall` chose them for this layer.
        let (recalled, source) = match (&self.recalled, cold) {
            (Some(r), Some(_)) if plan.used == cap => (r.rows(layer), Some(r)),
            _ => (0, None),
        };
        let used = plan.used + recalled;
        let width = cap + recalled;
        let f16 = self.dtype == KvDType::F16;
        scratch.prepare(q, q_sink, n_kv, n_rep * width, f16);
        let AttnScratch { q, q_sink, groups } = scratch;
        let lc = &self.layers[layer];
        let streams = self.last_attended.replace(layer) != Some(layer);
        let args = GroupArgs { hd, used, cap: width, sink_until: plan.sink_until, recall_from: plan.used, scale: 1.0 / (hd as f32).sqrt(), f16, streams };
        let (q, q_sink) = (&q[..], &q_sink[..]);
        let groups_ptr = SyncPtr(groups.as_mut_ptr());
        let out_ptr = SyncPtr(out.as_mut_ptr());
        let run = |g: usize| {
            // SAFETY: each group index is run by exactly one thread, and group g owns its
            // scratch and the heads g*n_rep..(g+1)*n_rep of `out`.
            let gs = unsafe { &mut *groups_ptr.get().add(g) };
            let og = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(g * n_rep * hd), n_rep * hd) };
            let heads = g * n_rep * hd..(g + 1) * n_rep * hd;
            let GroupScratch { scores, kbuf, vbuf, converted } = gs;
            // What the buffers hold is current but for this token's slot when they were
            // made at the change before this token's write (an f16 cache; see `GroupScratch`).
            let kept = if converted.0 == before { converted.1 } else { 0 };
            *converted = (lc.stamp, plan.used);
            let (recalled_k, recalled_v) = source.map_or((Bf16Keys::default(), ValueCodes::default()), |r| r.head(layer, g, recalled));
            let (first, used) = (g * cap * hd, plan.used);
            let window_k = lc.k.rows_since(first, used, hd, kept, plan.slot, kbuf);
            let window_v = lc.v.rows_since(first, used, hd, kept, plan.slot, vbuf);
            let rows = Rows { window_k, window_v, recalled_k, recalled_v };
            attend_heads(&args, n_rep, &q[heads.clone()], &q_sink[heads], &rows, scores, og);
        };
        let n = crate::backend::cpu::threads().min(n_kv);
        if n > 1 && used * n_head * hd >= 1 << 15 {
            crate::backend::cpu::par_for(n, n_kv, &run);
        } else {
            for g in 0..n_kv {
                run(g);
            }
        }
    }
}
