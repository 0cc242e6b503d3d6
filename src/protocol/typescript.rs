//! The protocol's TypeScript declarations, rendered from the Rust types by
//! ts-rs into `www/protocol.d.ts` (checked by the test `declarations_are_current`).

use super::*;
use ts_rs::TS;

/// `www/protocol.d.ts`, relative to the crate root.
pub const DECLARATIONS_PATH: &str = "www/protocol.d.ts";

/// Every protocol type's TypeScript declaration, in this order, and the names of
/// the types each refers to (to check that none is missing).
macro_rules! declare {
    ($cfg:expr, $($t:ty),* $(,)?) => {
        vec![$((
            <$t as TS>::ident($cfg),
            format!("{}export {}", <$t as TS>::docs().unwrap_or_default(), <$t as TS>::decl($cfg)),
            <$t as TS>::dependencies($cfg).into_iter().map(|d| d.ts_name).collect::<Vec<String>>(),
        )),*]
    };
}

/// The contents of `www/protocol.d.ts`.
pub fn declarations() -> String {
    // serde-wasm-bindgen's JSON-compatible serializer sends u64 as a number.
    let cfg = ts_rs::Config::new().with_large_int("number");
    let decls = declare!(
        &cfg,
        StepReply,
        GenerationResult,
        GenerationStats,
        TokenLogprob,
        TokenAlternative,
        ToolCallReply,
        StopReason,
        KvStats,
        ColdStats,
        RecalledBlock,
        BatchStepReply,
        BatchStepEvent,
        BatchStats,
        ModelInfo,
        LoadTimings,
        EngineStats,
        EngineBackend,
        AdapterInfo,
        GpuStepCosts,
        Profile,
        PlainRead,
        MemoryView,
        TokenTier,
        EngineLoadOptions,
        EngineGenerateOptions,
        ResponseFormat,
        ToolChoiceOption,
        ToolMode,
        EngineBatchOptions,
        WorkerRequest,
        WorkerLoadOptions,
        BackendChoice,
        SimdChoice,
        PromptInput,
        ChatMessage,
        BatchInput,
        WorkerBatchOptions,
        WorkerMessage,
        LoadPhase,
        DoneResult,
        WorkerStats,
        WorkerEngineStats,
        WasmBuild,
        ResultValue,
        LoadReply,
        WorkerError,
    );
    let declared: Vec<&str> = decls.iter().map(|(name, _, _)| name.as_str()).collect();
    let mut out = String::from(
        "// The worker protocol: what kvchat's wasm engine (src/wasm.rs) sends to www/worker.js,\n\
         // and the option objects it reads; then the messages between the page (www/kvchat.js)\n\
         // and the worker (www/worker.js), WorkerRequest and WorkerMessage.\n\
         // Generated from src/protocol/ by\n\
         // `cargo test --release --lib protocol` (KVCHAT_BLESS=1 rewrites it): do not edit.\n",
    );
    for (name, decl, deps) in &decls {
        for d in deps {
            assert!(declared.contains(&d.as_str()), "{name} refers to {d}: add it to the list in protocol::declarations");
        }
        out.push('\n');
        out.push_str(&pretty(decl));
        out.push('\n');
    }
    out
}

/// Lays ts-rs's one-line declarations out one field per line: the fields of each
/// top-level `{ … }` (split at commas outside nested braces, strings and comments),
/// each after its doc comment.
fn pretty(decl: &str) -> String {
    fn field(out: &mut String, item: &str) {
        let mut item = item.trim();
        if item.is_empty() {
            return;
        }
        if let (true, Some(end)) = (item.starts_with("/**"), item.find("*/")) {
            for line in item[..end + 2].lines().map(str::trim) {
                out.push_str(if line.starts_with('*') { "   " } else { "  " });
                out.push_str(line);
                out.push('\n');
            }
            item = item[end + 2..].trim();
        }
        out.push_str("  ");
        out.push_str(item);
        out.push_str(",\n");
    }
    let (mut out, mut item) = (String::new(), String::new());
    let (mut depth, mut quote, mut comment) = (0usize, None::<char>, false);
    let mut prev = '\0';
    for c in decl.chars() {
        let before = depth;
        if let Some(q) = quote {
            quote = (c != q).then_some(q);
        } else if comment {
            comment = !(prev == '*' && c == '/');
        } else {
            match c {
                '"' | '\'' | '`' => quote = Some(c),
                '*' if prev == '/' => comment = true,
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        prev = c;
        match (before, depth) {
            (0, 0) => out.push(c),
            (0, _) => out.push_str("{\n"),
            (_, 0) => {
                field(&mut out, &std::mem::take(&mut item));
                out.push('}');
            }
            (1, 1) if c == ',' && quote.is_none() && !comment => field(&mut out, &std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    out
}
