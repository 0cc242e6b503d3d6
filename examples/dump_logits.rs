//! Prints the logits kvchat computes for a token sequence (one JSON array per
//! position), for comparing against llama.cpp. Usage: dump_logits MODEL IDS_JSON
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("model");
    let ids: Vec<u32> = serde_json::from_str(&args[2]).expect("ids");
    let mut opts = kvchat::EngineOptions::default();
    if std::env::var("KV_F16").is_ok() {
        opts.kv.dtype = kvchat::KvDType::F16;
    }
    let mut e = kvchat::Engine::load(&bytes, opts).expect("load");
    let mut out = Vec::new();
    for i in 0..ids.len() {
        let l = if i == 0 { e.logits(&ids[..1]) } else { e.append(&ids[i..i + 1]) }.expect("forward");
        out.push(l);
    }
    println!("{}", serde_json::to_string(&out).unwrap());
}
