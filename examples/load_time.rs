//! Times the steps of loading a model from bytes already in memory (the
//! "model ready" figure of the benchmarks). Usage: load_time MODEL
fn main() {
    let bytes = std::fs::read(std::env::args().nth(1).expect("model path")).expect("read");
    let t = std::time::Instant::now();
    let g = kvchat::gguf::Gguf::parse(&bytes).expect("gguf");
    let t_parse = t.elapsed();
    let t = std::time::Instant::now();
    let tok = kvchat::tokenizer::Tokenizer::from_gguf(&g).expect("tokenizer");
    let t_tok = t.elapsed();
    drop(tok);
    let t = std::time::Instant::now();
    let cfg = kvchat::model::LlamaConfig::from_gguf(&g).expect("config");
    let m = kvchat::model::Llama::load(&g, cfg, &candle_core::Device::Cpu).expect("weights");
    let t_w = t.elapsed();
    drop(m);
    println!("weights {:.0} ms", t_w.as_secs_f64() * 1e3);
    let t = std::time::Instant::now();
    let e = kvchat::Engine::load(&bytes, kvchat::EngineOptions::default()).expect("load");
    let t_all = t.elapsed();
    println!(
        "parse {:.0} ms, tokenizer {:.0} ms, whole Engine::load {:.0} ms ({} weight bytes)",
        t_parse.as_secs_f64() * 1e3,
        t_tok.as_secs_f64() * 1e3,
        t_all.as_secs_f64() * 1e3,
        e.weight_bytes()
    );
}
