//! Native soak through the CLI: 200,000 generated tokens through a 512-token
//! window (tiny model, so it takes seconds). Peak memory must not depend on how
//! long the generation runs: the 200k-token run peaks within a few MiB of the
//! 20k-token run (what grows is only the returned text and token ids).

use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the CLI and returns (peak RSS in KiB from /proc, parsed JSON output).
fn run(model: &std::path::Path, tokens: usize) -> (u64, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvchat"))
        .args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", "the cat", "--max-tokens", &tokens.to_string(), "--ignore-eos", "--kv-window", "512", "--kv-sinks", "4", "--json"])
        .env("CANDLE_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(kb) = s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()) {
                peak = peak.max(kb);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    let out = reader.join().unwrap();
    (peak, serde_json::from_str(out.trim()).expect("one JSON line"))
}

#[test]
fn two_hundred_thousand_tokens_through_a_512_window() {
    let dir = std::env::temp_dir().join(format!("kvchat-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, kvchat::testing::tiny_llama_gguf(7)).unwrap();
    let (short_peak, short) = run(&model, 20_000);
    let (long_peak, long) = run(&model, 200_000);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(long["generated_ids"].as_array().unwrap().len(), 200_000);
    let kv = &long["kv"];
    assert_eq!(kv["used"], 512);
    assert_eq!(kv["capacity"], 512);
    assert_eq!(kv["evicted"].as_u64().unwrap(), 200_000 + short["prompt_ids"].as_array().unwrap().len() as u64 - 1 - 512);
    assert_eq!(kv["bytes"], short["kv"]["bytes"]);
    println!("peak RSS: {short_peak} KiB after 20k tokens, {long_peak} KiB after 200k tokens");
    // 180k more tokens may add their ids and text (a few MiB), nothing proportional to the cache.
    assert!(long_peak < short_peak + 12 * 1024, "peak RSS grew from {short_peak} to {long_peak} KiB");
}
