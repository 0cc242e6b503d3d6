//! Structured output on the real model (SmolLM2-135M-Instruct): ten JSON
//! schemas (tests/fixtures/schemas/: nested objects, enums, bounded arrays,
//! numbers with ranges, optional fields, a pattern), twenty completions each
//! sampled at temperature 0.7 through the batch engine. Every constrained
//! completion must parse and validate; the unconstrained rate (the same
//! prompts without the mask) is printed beside it. Plus: grammars, regexes,
//! logprobs, logit bias and bad formats as typed errors.
//!
//! The validator below is the test's own oracle, independent of the grammar
//! engine: it checks exactly the keywords the fixtures use.

mod common;
use common::*;
use kvchat::{BatchEvent, BatchOptions, Engine, EngineOptions, Error, GenerateOptions, Message, OutputFormat, Prompt, SamplerConfig};
use serde_json::Value;

const SAMPLES: usize = 20;

fn schemas() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())).collect()
}

/// Why `v` does not satisfy `schema` (None when it does).
fn violation(v: &Value, schema: &Value) -> Option<String> {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        return (!options.contains(v)).then(|| format!("{v} not in the enum"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let is = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Some(format!("{v} is not of type {types:?}"));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
            return Some(format!("{x} out of range"));
        }
    }
    if let Some(s) = v.as_str() {
        if num("maxLength").is_some_and(|m| s.chars().count() as f64 > m) {
            return Some(format!("{s:?} too long"));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            if !regex::Regex::new(p).unwrap().is_match(s) {
                return Some(format!("{s:?} does not match {p}"));
            }
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as f64;
        if num("minItems").is_some_and(|m| n < m) || num("maxItems").is_some_and(|m| n > m) {
            return Some(format!("{} items", a.len()));
        }
        if let Some(items) = schema.get("items") {
            return a.iter().find_map(|x| violation(x, items));
        }
    }
    if let Some(o) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                return Some(format!("{r} is missing"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => {
                    if let Some(why) = violation(x, s) {
                        return Some(format!("{k}: {why}"));
                    }
                }
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => return Some(format!("unexpected {k}")),
                None => {}
            }
        }
    }
    None
}

fn valid(text: &str, schema: &Value) -> bool {
    serde_json::from_str::<Value>(text.trim()).is_ok_and(|v| violation(&v, schema).is_none())
}

/// The unconstrained rate, leniently: the first `{` to the last `}` of the text (code fences and prose around it dropped).
fn valid_inside(text: &str, schema: &Value) -> bool {
    match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => valid(&text[a..=b], schema),
        _ => false,
    }
}

fn prompt(title: &str, schema: &Value) -> Vec<Message> {
    let user = format!("Write {title} as JSON following this JSON schema: {schema}. Answer with the JSON only.");
    vec![Message::new("user", user)]
}

fn engine(bytes: &[u8]) -> Engine {
    Engine::load(bytes, EngineOptions::default()).unwrap()
}

/// Twenty sampled completions of one prompt (seeds 0..20), as one batch.
fn sample(e: &mut Engine, messages: &[Message], format: Option<OutputFormat>) -> Vec<String> {
    let opts = |seed| GenerateOptions {
        max_tokens: 160,
        sampler: SamplerConfig { temperature: 0.7, seed: Some(seed), ..Default::default() },
        format: format.clone(),
        ..Default::default()
    };
    let inputs: Vec<(Prompt, GenerateOptions)> = (0..SAMPLES as u64).map(|s| (Prompt::Chat(messages), opts(s))).collect();
    let mut b = e.start_batch(&inputs, BatchOptions { batch_size: SAMPLES, ..Default::default() }).unwrap();
    let mut texts = vec![String::new(); SAMPLES];
    while !b.is_done() {
        for ev in e.step_batch(&mut b).unwrap() {
            if let BatchEvent::Done { index, generation } = ev {
                texts[index] = generation.text;
            }
        }
    }
    texts
}

#[test]
fn every_constrained_completion_parses_and_validates() {
    let Some(bytes) = real_model() else { return };
    let mut e = engine(&bytes);
    let (mut constrained_ok, mut free_ok, mut free_inside, mut total) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (name, schema) in schemas() {
        let title = schema["title"].as_str().unwrap().to_string();
        let messages = prompt(&title, &schema);
        let constrained = sample(&mut e, &messages, Some(OutputFormat::JsonSchema(schema.clone())));
        let free = sample(&mut e, &messages, None);
        let c = constrained.iter().filter(|t| valid(t, &schema)).count();
        let f = free.iter().filter(|t| valid(t, &schema)).count();
        let fi = free.iter().filter(|t| valid_inside(t, &schema)).count();
        eprintln!("{name:<14} constrained {c:>2}/{SAMPLES}  unconstrained {f:>2}/{SAMPLES} ({fi:>2} inside the text)   e.g. {}", constrained[0].trim());
        eprintln!("{:<14} unconstrained e.g. {:?}", "", free[0].chars().take(120).collect::<String>());
        failures.extend(constrained.iter().filter(|t| !valid(t, &schema)).map(|t| format!("{name}: {t:?}")));
        constrained_ok += c;
        free_ok += f;
        free_inside += fi;
        total += SAMPLES;
    }
    eprintln!("valid JSON for the schema: constrained {constrained_ok}/{total}, unconstrained {free_ok}/{total} ({free_inside}/{total} counting JSON inside the text)");
    assert!(failures.is_empty(), "invalid constrained completions:\n{}", failures.join("\n"));
}

#[test]
fn grammars_and_regexes_shape_the_text() {
    let Some(bytes) = real_model() else { return };
    let mut e = engine(&bytes);
    let ask = [Message::new("user", "What is the capital of France?")];
    let greedy = |format| GenerateOptions { max_tokens: 40, sampler: SamplerConfig::greedy(), format: Some(format), ..Default::default() };
    let g = e.generate(Prompt::Chat(&ask), &greedy(OutputFormat::Regex("(Yes|No), [A-Z][a-z]+\\.".into())), |_| true).unwrap();
    assert!(regex::Regex::new("^(Yes|No), [A-Z][a-z]+\\.$").unwrap().is_match(&g.text), "{:?}", g.text);
    let lark = "start: \"The answer is \" city \".\"\ncity: \"Paris\" | \"London\" | \"Rome\"";
    let g = e.generate(Prompt::Chat(&ask), &greedy(OutputFormat::Lark(lark.into())), |_| true).unwrap();
    assert!(["The answer is Paris.", "The answer is London.", "The answer is Rome."].contains(&g.text.as_str()), "{:?}", g.text);
    assert_eq!(g.stop_reason, Some(kvchat::StopReason::Eos));
    assert!(g.stats.grammar_compile_ms > 0.0 && g.stats.mask_ms > 0.0);
    let g = e.generate(Prompt::Chat(&ask), &greedy(OutputFormat::JsonObject), |_| true).unwrap();
    assert!(serde_json::from_str::<Value>(&g.text).unwrap().is_object(), "{:?}", g.text);
}

#[test]
fn bad_formats_are_typed_errors_and_the_engine_goes_on() {
    let Some(bytes) = real_model() else { return };
    let mut e = engine(&bytes);
    let with = |format| GenerateOptions { max_tokens: 8, sampler: SamplerConfig::greedy(), format: Some(format), ..Default::default() };
    for bad in [
        OutputFormat::Lark("start: nothing_defined".into()),
        OutputFormat::Regex("(unclosed".into()),
        OutputFormat::JsonSchema(serde_json::json!({ "type": "object", "properties": { "a": { "$ref": "#/nowhere" } }, "required": ["a"] })),
        OutputFormat::JsonSchema(serde_json::json!({ "type": "wibble" })),
    ] {
        match e.generate(Prompt::Raw("Hi"), &with(bad.clone()), |_| true) {
            Err(Error::InvalidOption(m)) => assert!(m.starts_with("response format"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(OutputFormat::json_schema("{not json").is_err());
    let g = e.generate(Prompt::Raw("Hi"), &GenerateOptions { max_tokens: 4, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() }, |_| true).unwrap();
    assert_eq!(g.generated_ids.len(), 4);
}

#[test]
fn logprobs_and_logit_bias() {
    let Some(bytes) = real_model() else { return };
    let mut e = engine(&bytes);
    let opts = GenerateOptions { max_tokens: 6, sampler: SamplerConfig::greedy(), ignore_eos: true, logprobs: Some(3), ..Default::default() };
    let g = e.generate(Prompt::Raw("The capital of France is"), &opts, |_| true).unwrap();
    assert_eq!(g.logprobs.len(), 6);
    for (t, id) in g.logprobs.iter().zip(&g.generated_ids) {
        // Greedy: the chosen token is the most likely one, and its own first alternative.
        assert_eq!(t.chosen.token, *id);
        assert_eq!(t.top.len(), 3);
        assert_eq!(t.top[0].token, *id);
        assert!(t.chosen.logprob <= 0.0 && t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    }
    // Logprobs ask for every logit but leave greedy tokens as they were.
    let plain = e.generate(Prompt::Raw("The capital of France is"), &GenerateOptions { logprobs: None, ..opts.clone() }, |_| true).unwrap();
    assert_eq!(plain.generated_ids, g.generated_ids);
    // A ban moves greedy decoding off its first choice.
    let first = g.generated_ids[0];
    let banned = GenerateOptions { logit_bias: vec![(first, -100.0)], ..opts.clone() };
    let b = e.generate(Prompt::Raw("The capital of France is"), &banned, |_| true).unwrap();
    assert_ne!(b.generated_ids[0], first);
    assert!(!b.generated_ids.contains(&first));
    assert!(matches!(e.generate(Prompt::Raw("x"), &GenerateOptions { logit_bias: vec![(1 << 30, 1.0)], ..opts.clone() }, |_| true), Err(Error::InvalidOption(_))));
    assert!(matches!(e.generate(Prompt::Raw("x"), &GenerateOptions { logprobs: Some(21), ..opts }, |_| true), Err(Error::InvalidOption(_))));
}

/// The mask is built from each vocabulary kind: Gemma 3's SentencePiece one (`▁` for spaces, byte tokens).
#[test]
fn sentencepiece_vocabularies_are_masked_too() {
    let Some(bytes) = extra_model("models/gemma-3-270m-q4_k_m.gguf") else { return };
    let mut e = engine(&bytes);
    let greedy = |format| GenerateOptions { max_tokens: 30, sampler: SamplerConfig::greedy(), format: Some(format), ..Default::default() };
    let g = e.generate(Prompt::Raw("The capital of France is"), &greedy(OutputFormat::Regex(" (Paris|London|Rome)\\.".into())), |_| true).unwrap();
    assert_eq!(g.text, " Paris.");
    let schema = serde_json::json!({ "type": "object", "properties": { "city": { "enum": ["Paris", "Lyon"] }, "é": { "type": "boolean" } }, "required": ["city", "é"], "additionalProperties": false });
    let g = e.generate(Prompt::Raw("A city in France, as JSON:"), &greedy(OutputFormat::JsonSchema(schema.clone())), |_| true).unwrap();
    assert!(valid(&g.text, &schema), "{:?}", g.text);
}
