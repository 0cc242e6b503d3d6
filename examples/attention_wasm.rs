//! The decode attention of one head group in wasm, timed from JavaScript
//! in headless Chromium (scripts/bench-attention-wasm.mjs): SmolLM2's shape
//! as in `attention_stream.rs` (head size 64, three query heads per kv head,
//! a 516-key window, 512 recalled rows with one-byte value codes), over
//! `copies` distinct groups in turn: 1 keeps the rows in cache, 90 (a decode
//! step's layers × kv heads, ~38 MB) streams them from memory.
//!
//!   cargo build --release --target wasm32-unknown-unknown --example attention_wasm

use kvchat::backend::cpu::attention::{attend_heads, GroupArgs, Rows, ValueCodes};

const HEAD: usize = 64;
const QUERY_HEADS: usize = 3;
const WINDOW: usize = 516;
const RECALLED: usize = 512;

struct Group {
    window_k: Vec<f32>,
    window_v: Vec<f32>,
    recalled_k: Vec<f32>,
    codes: Vec<u8>,
    params: Vec<f32>,
}

struct Bench {
    groups: Vec<Group>,
    q: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

static mut BENCH: Option<Bench> = None;

fn floats(seed: &mut u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 17;
            *seed ^= *seed << 5;
            *seed as f32 / u32::MAX as f32 - 0.5
        })
        .collect()
}

/// Makes `copies` groups (once; later calls keep the first ones).
#[no_mangle]
pub extern "C" fn setup(copies: u32) {
    let mut seed = 12345u32;
    let groups = (0..copies.max(1))
        .map(|_| Group {
            window_k: floats(&mut seed, WINDOW * HEAD),
            window_v: floats(&mut seed, WINDOW * HEAD),
            recalled_k: floats(&mut seed, RECALLED * HEAD),
            codes: (0..RECALLED * HEAD).map(|i| (i * 7 % 251) as u8).collect(),
            params: floats(&mut seed, 2 * RECALLED).iter().map(|x| x * 0.01).collect(),
        })
        .collect();
    let q = floats(&mut seed, QUERY_HEADS * HEAD);
    let bench = Bench { groups, q, scores: vec![0.0; QUERY_HEADS * (WINDOW + RECALLED)], out: vec![0.0; QUERY_HEADS * HEAD] };
    // SAFETY: single-threaded wasm; no reference to BENCH is alive.
    unsafe { *std::ptr::addr_of_mut!(BENCH) = Some(bench) };
}

/// Runs `calls` attentions, cycling over the groups, over the window alone
/// (`recalled` 0) or window + recalled rows; returns a checksum of the output.
#[no_mangle]
pub extern "C" fn run(calls: u32, recalled: u32) -> f32 {
    // SAFETY: single-threaded wasm; the only reference.
    let Some(b) = (unsafe { &mut *std::ptr::addr_of_mut!(BENCH) }) else { return f32::NAN };
    let used = WINDOW + if recalled != 0 { RECALLED } else { 0 };
    let args = GroupArgs { hd: HEAD, used, cap: WINDOW + RECALLED, sink_until: 4, recall_from: WINDOW, scale: 0.125, f16: false, streams: true };
    let mut sum = 0.0;
    for i in 0..calls as usize {
        let g = &b.groups[i % b.groups.len()];
        let rows = Rows { window_k: &g.window_k, window_v: &g.window_v, recalled_k: &g.recalled_k, recalled_v: ValueCodes { codes: &g.codes, params: &g.params } };
        attend_heads(&args, QUERY_HEADS, &b.q, &b.q, &rows, &mut b.scores, &mut b.out);
        sum += b.out[0];
    }
    sum
}
