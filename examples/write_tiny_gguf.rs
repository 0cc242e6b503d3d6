//! Writes the tiny random-weight test model to a file (for the CLI soak and the
//! browser tests). Usage: write_tiny_gguf PATH [--base]
//! `--base` leaves out the chat template, as a base model has none.
fn main() {
    let path = std::env::args().nth(1).expect("usage: write_tiny_gguf PATH [--base]");
    let base = std::env::args().nth(2).as_deref() == Some("--base");
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).expect("create the folder");
    }
    let mut gguf = kvchat::testing::TinyGguf::new(7);
    if base {
        gguf.remove("tokenizer.chat_template");
    }
    std::fs::write(&path, gguf.to_bytes()).expect("write the model");
}
