//! How fast one head group's decode attention runs when its keys and values
//! come from memory rather than the CPU's caches: SmolLM2's shape (head size
//! 64, three query heads per kv head), a 516-key window and 512 recalled rows
//! (f32 keys, one-byte value codes), over `COPIES` distinct groups in turn —
//! 1 keeps them in cache, 90 (a decode step's layers × kv heads, ~38 MB)
//! streams them, as a long-context decode step does.
//!
//!   cargo run --release --example attention_stream [COPIES] [window|both]
//!
//! The numbers behind `KEYS_AHEAD` and friends in `backend/cpu/attention/x86.rs`.

use kvchat::backend::cpu::attention::{attend_heads, GroupArgs, Rows, ValueCodes};
use std::time::Instant;

const HEAD: usize = 64;
const QUERY_HEADS: usize = 3;
const WINDOW: usize = 516;
const RECALLED: usize = 512;

struct Group {
    window_k: Vec<f32>,
    window_v: Vec<f32>,
    recalled_k: Vec<f32>,
    codes: Vec<u8>,
}

fn main() {
    let copies: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(90);
    let with_recalled = std::env::args().nth(2).as_deref() != Some("window");
    let mut seed = 12345u32;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as f32 / u32::MAX as f32 - 0.5
    };
    let mut floats = |n: usize| (0..n).map(|_| random()).collect::<Vec<f32>>();
    let groups: Vec<Group> = (0..copies)
        .map(|_| Group { window_k: floats(WINDOW * HEAD), window_v: floats(WINDOW * HEAD), recalled_k: floats(RECALLED * HEAD), codes: (0..RECALLED * HEAD).map(|i| (i * 7 % 251) as u8).collect() })
        .collect();
    let params: Vec<f32> = floats(2 * RECALLED).iter().map(|x| x * 0.01).collect();
    let q = floats(QUERY_HEADS * HEAD);
    let used = if with_recalled { WINDOW + RECALLED } else { WINDOW };
    let args = GroupArgs { hd: HEAD, used, cap: WINDOW + RECALLED, sink_until: 4, recall_from: WINDOW, scale: 0.125, f16: false, streams: true };
    let mut scores = vec![0f32; QUERY_HEADS * (WINDOW + RECALLED)];
    let mut out = vec![0f32; QUERY_HEADS * HEAD];
    let calls = 20_000;
    let start = Instant::now();
    for i in 0..calls {
        let g = &groups[i % copies];
        let rows = Rows { window_k: &g.window_k, window_v: &g.window_v, recalled_k: &g.recalled_k, recalled_v: ValueCodes { codes: &g.codes, params: &params } };
        attend_heads(&args, QUERY_HEADS, &q, &q, &rows, &mut scores, &mut out);
    }
    let micros = start.elapsed().as_secs_f64() / calls as f64 * 1e6;
    println!("{copies} groups, {used} keys: {micros:.2} µs a group ({:.3} ms for 90)", micros * 90.0 / 1000.0);
}
