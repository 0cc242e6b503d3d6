//! Head groups of SmolLM2's shape for the attention timings
//! (`attention_stream.rs` natively, `attention_wasm.rs` in the browser):
//! head size 64, three query heads per kv head, a 516-key window and 512
//! recalled rows (bf16 keys, one-byte value codes), filled with noise.

use kvchat::backend::cpu::attention::{attend_heads, Bf16Keys, GroupArgs, Rows, ValueCodes};

pub const HEAD: usize = 64;
pub const QUERY_HEADS: usize = 3;
pub const WINDOW: usize = 516;
pub const RECALLED: usize = 512;

/// One kv head's rows.
struct Group {
    window_k: Vec<f32>,
    window_v: Vec<f32>,
    recalled_k: Vec<u32>,
    codes: Vec<u8>,
    params: Vec<f32>,
}

/// `copies` distinct groups (1 keeps the rows in cache; 90, a decode step's
/// layers × kv heads at ~38 MB, streams them from memory) and one query.
pub struct HeadGroups {
    groups: Vec<Group>,
    q: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

impl HeadGroups {
    pub fn new(copies: usize) -> Self {
        let mut seed = 12345u32;
        let mut floats = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as f32 / u32::MAX as f32 - 0.5
                })
                .collect()
        };
        let groups = (0..copies.max(1))
            .map(|_| Group {
                window_k: floats(WINDOW * HEAD),
                window_v: floats(WINDOW * HEAD),
                recalled_k: floats(RECALLED * HEAD / 2).iter().map(|&x| x.to_bits() & 0xFFFF_0000 | (x * 0.5).to_bits() >> 16).collect(),
                codes: (0..RECALLED * HEAD).map(|i| (i * 7 % 251) as u8).collect(),
                params: floats(2 * RECALLED).iter().map(|x| x * 0.01).collect(),
            })
            .collect();
        let q = floats(QUERY_HEADS * HEAD);
        Self { groups, q, scores: vec![0.0; QUERY_HEADS * (WINDOW + RECALLED)], out: vec![0.0; QUERY_HEADS * HEAD] }
    }

    /// Keys attended per call: the window's, with or without the recalled rows.
    pub fn keys(with_recalled: bool) -> usize {
        WINDOW + if with_recalled { RECALLED } else { 0 }
    }

    /// Decode attention of group `i % copies` (its rows read as a step's
    /// first token reads them); returns the first output value.
    pub fn attend(&mut self, i: usize, with_recalled: bool) -> f32 {
        let args = GroupArgs { hd: HEAD, used: Self::keys(with_recalled), cap: WINDOW + RECALLED, sink_until: 4, recall_from: WINDOW, scale: 0.125, f16: false, streams: true };
        let g = &self.groups[i % self.groups.len()];
        let rows = Rows { window_k: &g.window_k, window_v: &g.window_v, recalled_k: Bf16Keys { words: &g.recalled_k }, recalled_v: ValueCodes { codes: &g.codes, params: &g.params } };
        attend_heads(&args, QUERY_HEADS, &self.q, &self.q, &rows, &mut self.scores, &mut self.out);
        self.out[0]
    }
}
