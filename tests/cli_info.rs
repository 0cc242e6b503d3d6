//! `kvchat info`: the report on the tiny model, and on a base model (no chat template).

use std::process::Command;

fn info(name: &str, gguf: &kvchat::testing::TinyGguf) -> String {
    let path = std::env::temp_dir().join(format!("kvchat-info-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, gguf.to_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvchat")).args(["info", "--model"]).arg(&path).output().expect("the CLI starts");
    std::fs::remove_file(&path).ok();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn info_reports_shape_types_tokenizer_template_and_kv() {
    let out = info("chat", &kvchat::testing::TinyGguf::new(7));
    for want in [
        "architecture    llama",
        "layers 2 · width 64 · heads 4 · kv heads 2 · head size 16",
        "0-1 global (RoPE base 10000)",
        "F32 ×5",
        "Q4_K ×1",
        "own kernels     Q4_0 ×4, Q4_1 ×4, Q4_K ×1, Q6_K ×1, Q8_0 ×3 (matrices)",
        "slower path     F16 ×2",
        "gpt2 (pre-tokenizer smollm)",
        "EOS 2 \"<|im_end|>\"",
        "characters, renders",
        // 2 layers × (K + V) × 2 kv heads × 16 floats × 4 bytes.
        "KV f32/token    512 B (all 2 layers global)",
        "KV f16/token    256 B (all 2 layers global)",
        "KV f32 window   4096 tokens: 2.0 MiB (every layer global: the uniform cache)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let mut base = kvchat::testing::TinyGguf::new(7);
    base.remove("tokenizer.chat_template");
    assert!(info("base", &base).contains("none: a base model, plain completion only"));
}
