//! How fast one head group's decode attention runs when its keys and values
//! come from memory rather than the CPU's caches (the groups of
//! `support/head_groups.rs`), over `COPIES` distinct groups in turn — 1 keeps
//! them in cache, 90 (a decode step's layers × kv heads, ~38 MB) streams
//! them, as a long-context decode step does.
//!
//!   cargo run --release --example attention_stream [COPIES] [window|both]
//!
//! The numbers behind `KEYS_AHEAD` and friends in `backend/cpu/attention/x86.rs`.

#[path = "support/head_groups.rs"]
mod head_groups;

use head_groups::HeadGroups;
use std::time::Instant;

fn main() {
    let copies: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(90);
    let with_recalled = std::env::args().nth(2).as_deref() != Some("window");
    let mut groups = HeadGroups::new(copies);
    let calls = 20_000;
    let start = Instant::now();
    for i in 0..calls {
        groups.attend(i, with_recalled);
    }
    let micros = start.elapsed().as_secs_f64() / calls as f64 * 1e6;
    println!("{copies} groups, {} keys: {micros:.2} µs a group ({:.3} ms for 90)", HeadGroups::keys(with_recalled), micros * 90.0 / 1000.0);
}
