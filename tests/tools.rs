//! Tool calls through the model's own template: Qwen2.5-Coder-0.5B-Instruct's
//! template takes tools and writes Hermes-style `<tool_call>` blocks. A
//! required call is forced by a grammar and read back as a typed call; a
//! tool's result goes back through the template and the model answers in
//! text; a template without tools (SmolLM2's) refuses them with a typed error.

mod common;
use common::*;
use kvchat::chat_template::tools::{ToolChoice, Tools};
use kvchat::{Engine, EngineOptions, Error, GenerateOptions, Message, Prompt, SamplerConfig, StopReason};
use serde_json::{json, Value};

const QWEN: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn tools() -> Vec<Value> {
    vec![
        json!({ "type": "function", "function": { "name": "get_weather", "description": "The current weather in a city.",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" }, "unit": { "enum": ["celsius", "fahrenheit"] } }, "required": ["city"] } } }),
        json!({ "type": "function", "function": { "name": "add", "description": "Adds two integers.",
            "parameters": { "type": "object", "properties": { "a": { "type": "integer" }, "b": { "type": "integer" } }, "required": ["a", "b"] } } }),
    ]
}

fn with_tools(choice: ToolChoice) -> GenerateOptions {
    GenerateOptions { max_tokens: 80, sampler: SamplerConfig::greedy(), tools: Some(Tools::new(tools(), choice).unwrap()), ..Default::default() }
}

#[test]
fn a_required_call_is_forced_read_back_and_answered() {
    let Some(bytes) = extra_model(QWEN) else { return };
    let mut e = Engine::load(&bytes, EngineOptions::default()).unwrap();
    let mut messages = vec![Message::new("user", "What is the weather like in Paris right now?")];
    let g = e.generate(Prompt::Chat(&messages), &with_tools(ToolChoice::Required), |_| true).unwrap();
    eprintln!("required: {:?} -> {:?}", g.text, g.tool_calls);
    assert_eq!(g.tool_calls.len(), 1, "{:?}", g.text);
    assert_eq!(g.tool_calls[0].name, "get_weather");
    assert!(g.tool_calls[0].arguments["city"].is_string(), "{:?}", g.tool_calls[0].arguments);
    assert_eq!(g.stop_reason, Some(StopReason::Eos));
    assert_eq!(g.content, "");

    // A named function: the call is of that tool.
    let add = e.generate(Prompt::Chat(&[Message::new("user", "What is 2 plus 3?")]), &with_tools(ToolChoice::Function("add".into())), |_| true).unwrap();
    eprintln!("named: {:?}", add.tool_calls);
    assert_eq!(add.tool_calls[0].name, "add");
    assert!(add.tool_calls[0].arguments["a"].is_i64() && add.tool_calls[0].arguments["b"].is_i64());

    // The call and its result go back through the template; the model answers in text.
    let call = json!({ "type": "function", "function": { "name": "get_weather", "arguments": g.tool_calls[0].arguments } });
    messages.push(Message { role: "assistant".into(), content: String::new(), tool_calls: Some(vec![call]) });
    messages.push(Message::new("tool", "{\"temperature_c\": 18, \"conditions\": \"light rain\"}"));
    let answer = e.generate(Prompt::Chat(&messages), &with_tools(ToolChoice::None), |_| true).unwrap();
    eprintln!("answer: {:?}", answer.text);
    assert!(answer.tool_calls.is_empty());
    assert!(answer.text.contains("18") || answer.text.to_lowercase().contains("rain"), "{:?}", answer.text);
    let prompt = e.render_chat(&messages).unwrap();
    assert!(prompt.contains("<tool_call>") && prompt.contains("<tool_response>"), "{prompt}");
}

#[test]
fn templates_without_tools_refuse_them() {
    let Some(bytes) = real_model() else { return };
    let mut e = Engine::load(&bytes, EngineOptions::default()).unwrap();
    let messages = [Message::new("user", "Hi")];
    match e.generate(Prompt::Chat(&messages), &with_tools(ToolChoice::Auto), |_| true) {
        Err(Error::Unsupported(m)) => assert!(m.contains("tools"), "{m}"),
        other => panic!("{other:?}"),
    }
    let tool_message = [Message::new("user", "Hi"), Message::new("tool", "42")];
    assert!(matches!(e.generate(Prompt::Chat(&tool_message), &GenerateOptions::default(), |_| true), Err(Error::InvalidPrompt(_))));
    assert!(matches!(e.generate(Prompt::Raw("Hi"), &with_tools(ToolChoice::Auto), |_| true), Err(Error::InvalidOption(_))));
    let g = e.generate(Prompt::Chat(&messages), &GenerateOptions { max_tokens: 3, sampler: SamplerConfig::greedy(), ..Default::default() }, |_| true).unwrap();
    assert!(!g.generated_ids.is_empty());
}
