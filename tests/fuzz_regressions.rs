//! Replays the fuzzers' kept inputs (tests/fuzz_corpus/<target>/: the seeds, a
//! slice of the corpus, and every crash found) through the fuzz targets' own
//! bodies (`kvchat::testing::fuzz`), so CI checks them without libFuzzer.

use kvchat::testing::fuzz;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{} is missing", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

#[test]
fn gguf_load_inputs() {
    for (name, data) in inputs("gguf_load") {
        fuzz::gguf_load(&data);
        eprintln!("ok {name}");
    }
}

#[test]
fn tokenizer_build_inputs() {
    for (name, data) in inputs("tokenizer_build") {
        fuzz::tokenizer_build(&data);
        eprintln!("ok {name}");
    }
}

#[test]
fn tokenize_inputs() {
    let tok = fuzz::tiny_tokenizer();
    for (name, data) in inputs("tokenize") {
        fuzz::tokenize(&tok, &data);
        eprintln!("ok {name}");
    }
}
