//! Writes the tiny random-weight test model to a file (for the CLI soak and the
//! browser reliability tests). Usage: write_tiny_gguf PATH
fn main() {
    let path = std::env::args().nth(1).expect("usage: write_tiny_gguf PATH");
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).expect("create the folder");
    }
    std::fs::write(&path, kvchat::testing::tiny_llama_gguf(7)).expect("write the model");
}
