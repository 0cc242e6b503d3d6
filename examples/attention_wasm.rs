//! The decode attention of one head group in wasm (the groups of
//! `support/head_groups.rs`), timed from JavaScript in headless Chromium by
//! `scripts/bench-attention-wasm.mjs`: `setup(copies)` makes the groups
//! (1 keeps the rows in cache, 90 streams them from memory), `run` attends.
//!
//!   cargo build --release --target wasm32-unknown-unknown --example attention_wasm

#[path = "support/head_groups.rs"]
mod head_groups;

use head_groups::HeadGroups;

static mut GROUPS: Option<HeadGroups> = None;

/// Makes `copies` groups.
#[no_mangle]
pub extern "C" fn setup(copies: u32) {
    // SAFETY: single-threaded wasm; no reference to GROUPS is alive.
    unsafe { *std::ptr::addr_of_mut!(GROUPS) = Some(HeadGroups::new(copies as usize)) };
}

/// Runs `calls` attentions, cycling over the groups, over the window alone
/// (`recalled` 0) or window + recalled rows; returns a checksum of the output.
#[no_mangle]
pub extern "C" fn run(calls: u32, recalled: u32) -> f32 {
    // SAFETY: single-threaded wasm; the only reference.
    let Some(groups) = (unsafe { &mut *std::ptr::addr_of_mut!(GROUPS) }) else { return f32::NAN };
    (0..calls as usize).map(|i| groups.attend(i, recalled != 0)).sum()
}
