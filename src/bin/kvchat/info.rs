//! `kvchat info --model FILE`: what a GGUF holds and what kvchat makes of it,
//! read through the library's own parser (the header and the tokenizer; no
//! weights are loaded).

use candle_core::quantized::GgmlDType;
use kvchat::backend::cpu::quant::QFormat;
use kvchat::chat_template::ChatTemplate;
use kvchat::gguf::Gguf;
use kvchat::kv_cache::{AttentionWindow, KvCacheConfig, KvDType};
use kvchat::model::config::LlamaConfig;
use kvchat::model::llama::Llama;
use kvchat::tokenizer::Tokenizer;
use std::collections::BTreeMap;

/// The window the KV comparison is computed at.
const COMPARE_WINDOW: usize = 4096;

/// The report on a model file's bytes, one `label  value` line each.
pub fn report(bytes: &[u8]) -> kvchat::Result<String> {
    let g = Gguf::parse(bytes)?;
    let cfg = LlamaConfig::from_gguf(&g)?;
    let mut lines = vec![
        ("file", format!("{} bytes, weights {} once loaded", thousands(bytes.len()), mib(Llama::estimate_bytes(&g, &cfg) as usize))),
        ("name", g.get_str("general.name").unwrap_or("–").to_string()),
    ];
    lines.extend(shape(&cfg));
    lines.extend(tensors(&g));
    lines.extend(tokenizer(&g));
    lines.push(("chat template", template(&g)));
    lines.extend(kv(&cfg));
    Ok(lines.into_iter().map(|(k, v)| format!("{k:<16}{v}\n")).collect())
}

/// Architecture, hyper-parameters, and each layer's attention kind and RoPE base.
fn shape(c: &LlamaConfig) -> Vec<(&'static str, String)> {
    let hyper = format!(
        "layers {} · width {} · heads {} · kv heads {} · head size {} (RoPE on {}) · FFN {} · context {} · vocab {}",
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.rope_dim, c.n_ff, c.context_length, c.vocab_size
    );
    // Runs of consecutive layers of one kind: "0-4 sliding window 512 (RoPE base 10000)".
    let mut runs: Vec<(usize, usize, String)> = Vec::new();
    for (i, b) in c.blocks.iter().enumerate() {
        let kind = match b.window {
            AttentionWindow::Global => format!("global (RoPE base {})", b.rope_base),
            AttentionWindow::Sliding(n) => format!("sliding window {n} (RoPE base {})", b.rope_base),
        };
        match runs.last_mut() {
            Some((_, end, k)) if *k == kind => *end = i,
            _ => runs.push((i, i, kind)),
        }
    }
    let layers = runs.iter().map(|(a, b, k)| if a == b { format!("{a} {k}") } else { format!("{a}-{b} {k}") }).collect::<Vec<_>>().join(", ");
    vec![("architecture", c.arch.name().to_string()), ("hyper-params", hyper), ("layer kinds", layers)]
}

/// GGUF's spelling of a type: `Q4_K`, `Q8_0`, `F16`.
fn type_name(dt: GgmlDType) -> String {
    let s = format!("{dt:?}");
    match s.strip_suffix('K') {
        Some(head) if !head.contains('_') => format!("{head}_K"),
        _ => s,
    }
}

/// Tensor types with counts, and which matrix types have an own kernel.
fn tensors(g: &Gguf) -> Vec<(&'static str, String)> {
    let mut all: BTreeMap<String, usize> = BTreeMap::new();
    let mut matrices: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for name in g.tensor_names() {
        let (Some(dt), Some(dims)) = (g.tensor_dtype(name), g.tensor_dims(name)) else { continue };
        *all.entry(type_name(dt)).or_default() += 1;
        if dims.len() >= 2 {
            matrices.entry(type_name(dt)).or_insert((0, QFormat::of(dt).is_some())).0 += 1;
        }
    }
    let mut counts: Vec<_> = all.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list = |own: bool| {
        let v: Vec<_> = matrices.iter().filter(|(_, (_, o))| *o == own).map(|(t, (n, _))| format!("{t} ×{n}")).collect();
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    };
    vec![
        ("tensor types", counts.iter().map(|(t, n)| format!("{t} ×{n}")).collect::<Vec<_>>().join(", ")),
        ("own kernels", format!("{} (matrices)", list(true))),
        ("slower path", match list(false).as_str() {
            "none" => "none".to_string(),
            slow => format!("{slow} (matrices through candle; F16/BF16 widened to f32)"),
        }),
    ]
}

/// The tokenizer model and its special tokens (as the file declares them where
/// kvchat cannot build the tokenizer).
fn tokenizer(g: &Gguf) -> Vec<(&'static str, String)> {
    let model = g.get_str("tokenizer.ggml.model").unwrap_or("–");
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let tok = match Tokenizer::from_gguf(g) {
        Ok(t) => t,
        Err(e) => {
            let tokens = g.get_string_array("tokenizer.ggml.tokens").unwrap_or_default();
            let id = |key: &str| g.get_u64(key).ok().map(|id| format!("{id} {:?}", tokens.get(id as usize).copied().unwrap_or("?")));
            let special = ["bos", "eos", "eot", "eom"].iter().filter_map(|k| Some(format!("{} {}", k.to_uppercase(), id(&format!("tokenizer.ggml.{k}_token_id"))?))).collect::<Vec<_>>();
            return vec![
                ("tokenizer", format!("{model} (pre-tokenizer {pre}), {} tokens; kvchat cannot load it: {e}", tokens.len())),
                ("special tokens", special.join(" · ")),
            ];
        }
    };
    let name = |id: Option<u32>| match id {
        Some(id) => format!("{id} {:?}", tok.token_text(id).unwrap_or("?")),
        None => "none".into(),
    };
    let eog: Vec<_> = tok.eog_ids().iter().map(|&id| name(Some(id))).collect();
    let control = (0..tok.vocab_size() as u32).filter(|&id| tok.is_special(id)).count();
    vec![
        ("tokenizer", format!("{model} (pre-tokenizer {pre}), {} tokens, {control} control tokens", tok.vocab_size())),
        (
            "special tokens",
            format!("BOS {}{} · EOS {} · end of generation: {}", name(tok.bos()), if tok.has_bos_prefix() { " (added)" } else { "" }, name(tok.eos()), eog.join(", ")),
        ),
    ]
}

/// Whether there is a chat template, its length, and whether kvchat renders it.
fn template(g: &Gguf) -> String {
    match g.get_str("tokenizer.chat_template") {
        Err(_) => "none: a base model, plain completion only".into(),
        Ok(t) => match ChatTemplate::new(t, "", "") {
            Ok(_) => format!("{} characters, renders", thousands(t.len())),
            Err(e) => format!("{} characters, does not render ({e}): raw prompts only", thousands(t.len())),
        },
    }
}

/// K/V bytes per token by layer kind (f32 and f16), and the cache at a
/// 4096-token window (`KvCacheConfig::bytes_for`: a sliding layer keeps a ring
/// of exactly its own window) against a uniform cache of that window.
fn kv(c: &LlamaConfig) -> Vec<(&'static str, String)> {
    let windows = c.windows();
    let global = windows.iter().filter(|w| **w == AttentionWindow::Global).count();
    let sliding = c.n_layer - global;
    let mut out = Vec::new();
    for (dtype, per_label, window_label) in [(KvDType::F32, "KV f32/token", "KV f32 window"), (KvDType::F16, "KV f16/token", "KV f16 window")] {
        let cfg = KvCacheConfig { window: COMPARE_WINDOW, dtype, ..Default::default() };
        let per_token = |layers: usize| cfg.bytes_per_token(layers, c.kv_dim());
        let uniform = mib(COMPARE_WINDOW * per_token(c.n_layer));
        if sliding == 0 {
            out.push((per_label, format!("{} B (all {global} layers global)", thousands(per_token(global)))));
            out.push((window_label, format!("{COMPARE_WINDOW} tokens: {uniform} (every layer global: the uniform cache)")));
            continue;
        }
        let total = cfg.bytes_for(&windows, c.kv_dim()) as usize;
        let global_bytes = COMPARE_WINDOW * per_token(global);
        out.push((per_label, format!("global ({global} layers) {} B, sliding ({sliding} layers) {} B", thousands(per_token(global)), thousands(per_token(sliding)))));
        out.push((window_label, format!(
            "{COMPARE_WINDOW} tokens: {} (global {}, sliding rings {}) against {uniform} for a uniform cache ({:.1}× less)",
            mib(total), mib(global_bytes), mib(total - global_bytes), (COMPARE_WINDOW * per_token(c.n_layer)) as f64 / total as f64
        )));
    }
    out
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
