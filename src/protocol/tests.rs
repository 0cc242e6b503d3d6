//! The protocol's declarations are current, and no snake_case key reaches JS.

use super::*;
use crate::engine::{EngineOptions, GenerateOptions, Prompt};

#[test]
fn declarations_are_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DECLARATIONS_PATH);
    let want = declarations();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var("KVCHAT_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let line = have.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(have.lines().count().min(want.lines().count()));
    panic!(
        "{DECLARATIONS_PATH} is not what src/protocol.rs declares (first difference at line {}:\n  file:      {:?}\n  generated: {:?}).\n\
         Rewrite it with `KVCHAT_BLESS=1 cargo test --release --lib protocol` and update www/kvchat.d.ts and the JS that reads what changed.",
        line + 1,
        have.lines().nth(line).unwrap_or("<end of file>"),
        want.lines().nth(line).unwrap_or("<end of file>"),
    );
}

/// Every object key in `v`, recursively, with its path.
fn keys(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.push(format!("{path}.{k}"));
                keys(x, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, &format!("{path}[]"), out)),
        _ => {}
    }
}

fn assert_camel_case(what: &str, v: &impl Serialize) -> serde_json::Value {
    let v = serde_json::to_value(v).unwrap();
    let mut k = Vec::new();
    keys(&v, what, &mut k);
    let snake: Vec<_> = k.iter().filter(|k| k.rsplit('.').next().unwrap().contains('_') && !k.contains(".msPerToken.")).collect();
    assert!(snake.is_empty(), "snake_case keys reach JS: {snake:?}");
    v
}

/// The replies of a real (tiny) engine: camelCase everywhere, the shapes JS reads.
#[test]
fn replies_are_camel_case() {
    let mut e = Engine::load(&crate::testing::tiny_llama_gguf(7), EngineOptions::default()).unwrap();
    let info = assert_camel_case("info", &ModelInfo::from(&e));
    assert_eq!(info["backend"], "cpu");
    assert_eq!(info["chatTemplate"], true);
    assert!(info["load"]["parseMs"].is_number());

    e.set_profiling(true);
    let opts = GenerateOptions { max_tokens: 4, ignore_eos: true, ..Default::default() };
    let mut s = e.start(Prompt::Raw("Hello"), &opts).unwrap();
    let done = loop {
        let step = e.step(&mut s).unwrap();
        let r = assert_camel_case("step", &StepReply::from(&step));
        assert!(r["piece"].is_string());
        if matches!(step, Step::Done(_)) {
            break r;
        }
        assert!(r.get("done").is_none() && r.get("waiting").is_none(), "{r}");
    };
    assert_eq!(done["done"], true);
    assert_eq!(done["result"]["generatedIds"].as_array().unwrap().len(), 4);
    assert_eq!(done["result"]["stats"]["generatedTokens"], 4);
    assert_eq!(done["result"]["stopReason"], "length");

    let stats = assert_camel_case("stats", &EngineStats::of(&e, 1.0));
    assert_eq!(stats["generatedTokens"], 4);
    assert!(stats["gpuStep"].is_null() && stats["adapter"].is_null());
    let profile = assert_camel_case("profile", &Profile::from(e.profile().unwrap()));
    assert!(profile["msPerToken"]["attention"].is_number());

    let prompts = [(Prompt::Raw("a b"), opts.clone()), (Prompt::Raw("c d"), opts.clone())];
    let mut b = e.start_batch(&prompts, batch::BatchOptions { batch_size: 2, kv: None, share_prefix: true }).unwrap();
    let mut finished = 0;
    while !b.is_done() {
        let events: Vec<BatchStepEvent> = e.step_batch(&mut b).unwrap().iter().map(BatchStepEvent::from).collect();
        let reply = BatchStepReply { events, done: b.is_done(), stats: (&b.stats()).into() };
        let r = assert_camel_case("batchStep", &reply);
        for ev in r["events"].as_array().unwrap() {
            if ev["done"] == true {
                finished += 1;
                assert_eq!(ev["result"]["stats"]["generatedTokens"], 4);
            }
        }
    }
    assert_eq!(finished, 2);
}

/// The page↔worker messages have today's wire shape: `type` first-level, camelCase variant names.
#[test]
fn worker_messages_wire_shape() {
    let json = |m: &WorkerMessage| serde_json::to_value(m).unwrap();
    assert_eq!(json(&WorkerMessage::Hello), serde_json::json!({ "type": "hello" }));
    assert_eq!(
        json(&WorkerMessage::Progress { id: 1.0, phase: LoadPhase::Init, loaded: 0.0, total: 1.0 }),
        serde_json::json!({ "type": "progress", "id": 1.0, "phase": "init", "loaded": 0.0, "total": 1.0 })
    );
    let error = WorkerError { name: "Error".into(), message: "m".into(), kind: "crash".into() };
    assert_eq!(json(&WorkerMessage::Crash { error }), serde_json::json!({ "type": "crash", "error": { "name": "Error", "message": "m", "kind": "crash" } }));
    let stats = WorkerStats {
        engine: WorkerEngineStats::Empty { backend: EngineBackend::Cpu, wasm_memory_bytes: 65536.0 },
        simd: Some(WasmBuild::RelaxedSimd),
        threads: 1.0,
        gpu_error: None,
    };
    assert_eq!(
        json(&WorkerMessage::Result { id: 2.0, value: ResultValue::Stats(stats) }),
        serde_json::json!({ "type": "result", "id": 2.0, "value": { "backend": "cpu", "wasmMemoryBytes": 65536.0, "simd": "relaxed-simd", "threads": 1.0, "gpuError": null } })
    );

    // What kvchat.js posts (`{ type, id, ...payload }`) reads as a request.
    let req = |v: serde_json::Value| serde_json::from_value::<WorkerRequest>(v).unwrap();
    assert!(matches!(req(serde_json::json!({ "type": "loseGpuDevice", "id": 3 })), WorkerRequest::LoseGpuDevice { .. }));
    assert!(matches!(req(serde_json::json!({ "type": "profile", "id": 3 })), WorkerRequest::Profile { on: None, .. }));
    let WorkerRequest::Load { options, .. } = req(serde_json::json!({
        "type": "load", "id": 1, "model": "https://x/m.gguf",
        "options": { "kvWindow": 256, "backend": "auto", "simd": "baseline", "cache": false, "threads": 2 }
    })) else {
        panic!("load")
    };
    assert_eq!((options.engine.kv_window, options.backend, options.simd), (Some(256.0), Some(BackendChoice::Auto), Some(SimdChoice::Baseline)));
    let WorkerRequest::GenerateBatch { inputs, options, .. } = req(serde_json::json!({
        "type": "generateBatch", "id": 4,
        "inputs": ["a", [{ "role": "user", "content": "b" }], { "input": "c", "maxTokens": 3 }],
        "options": { "batchSize": 2, "maxTokens": 4 }
    })) else {
        panic!("generateBatch")
    };
    assert_eq!((options.batch.batch_size, options.generate.max_tokens), (Some(2.0), Some(4.0)));
    assert!(matches!(&inputs[2], BatchInput::WithOptions { options, .. } if options.max_tokens == Some(3.0)));
    assert!(matches!(&inputs[1], BatchInput::Prompt(PromptInput::Chat(m)) if m[0].content == "b"));
}
