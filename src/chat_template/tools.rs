//! Tool calls in the format the model's own template writes them. Today one
//! format: Hermes', which Qwen2.5's template uses (and NousResearch's models):
//! a call is `<tool_call>\n{"name": "...", "arguments": {...}}\n</tool_call>`.
//! A template that renders `tools` and writes that tag takes tools; any other
//! template is refused with a typed error rather than guessed at.
//!
//! The engine renders the tools through the template, forces a call with a
//! grammar when the request requires one ([`ToolFormat::call_schema`]), and
//! reads the calls back out of the text ([`ToolFormat::parse`]).

use crate::error::{Error, Result};
use serde_json::{json, Value};

/// Whether and which tool the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The tools are described, the text is never read as a call.
    None,
    /// The model may answer or call (calls are read out of its text).
    Auto,
    /// The model must call one of the tools (a grammar forces the call).
    Required,
    /// The model must call this tool.
    Function(String),
}

/// A request's tools: OpenAI's `[{ type: "function", function: { name, description, parameters } }]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub specs: Vec<Value>,
    pub choice: ToolChoice,
}

impl Tools {
    /// Checks the specs' shape: every tool a function with a name, names unique.
    pub fn new(specs: Vec<Value>, choice: ToolChoice) -> Result<Self> {
        let mut names = Vec::new();
        for (i, t) in specs.iter().enumerate() {
            let name = t.pointer("/function/name").and_then(Value::as_str);
            match name {
                Some(n) if t.get("type") == Some(&json!("function")) && !n.is_empty() => names.push(n.to_string()),
                _ => return Err(Error::InvalidOption(format!("tools[{i}] must be {{ type: 'function', function: {{ name, parameters }} }}"))),
            }
        }
        if let Some(dup) = names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n)) {
            return Err(Error::InvalidOption(format!("two tools are named {dup}")));
        }
        if let ToolChoice::Function(f) = &choice {
            if !names.contains(f) {
                return Err(Error::InvalidOption(format!("tool_choice names {f}, which is not among the tools")));
            }
        }
        if specs.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
            return Err(Error::InvalidOption("tool_choice requires a call but there are no tools".into()));
        }
        Ok(Tools { specs, choice })
    }

    /// The tools a required call may be of.
    fn callable(&self) -> Vec<&Value> {
        self.specs
            .iter()
            .filter(|t| match &self.choice {
                ToolChoice::Function(f) => t.pointer("/function/name").and_then(Value::as_str) == Some(f),
                _ => true,
            })
            .collect()
    }
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// How a template writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`.
    Hermes,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

impl ToolFormat {
    /// The format a template's source writes calls in; None when it takes no tools.
    pub fn of_template(source: &str) -> Option<Self> {
        (source.contains("tools") && source.contains(OPEN) && source.contains(CLOSE)).then_some(ToolFormat::Hermes)
    }

    /// The text around a required call and the JSON schema of the call itself
    /// (`{"name": <one of the tools>, "arguments": <its parameters>}`), or None
    /// when the choice does not require a call.
    pub fn call_schema(&self, tools: &Tools) -> Option<(&'static str, Value, &'static str)> {
        if !matches!(tools.choice, ToolChoice::Required | ToolChoice::Function(_)) {
            return None;
        }
        let one = |t: &Value| {
            let params = t.pointer("/function/parameters").cloned().unwrap_or_else(|| json!({ "type": "object" }));
            json!({
                "type": "object",
                "properties": { "name": { "const": t.pointer("/function/name") }, "arguments": params },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        let options: Vec<Value> = tools.callable().into_iter().map(one).collect();
        let schema = if options.len() == 1 { options[0].clone() } else { json!({ "anyOf": options }) };
        Some(("<tool_call>\n", schema, "\n</tool_call>"))
    }

    /// The calls written in `text`, and the text outside them (trimmed). A
    /// block that is not a call (not JSON, no name) stays in the text.
    pub fn parse(&self, text: &str) -> (String, Vec<ToolCall>) {
        let mut calls = Vec::new();
        let mut content = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            let Some(len) = rest[start..].find(CLOSE) else { break };
            let body = &rest[start + OPEN.len()..start + len];
            match serde_json::from_str::<Value>(body.trim()) {
                Ok(v) if v.get("name").and_then(Value::as_str).is_some() => {
                    let name = v["name"].as_str().unwrap_or_default().to_string();
                    calls.push(ToolCall { name, arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})) });
                    content.push_str(&rest[..start]);
                }
                _ => content.push_str(&rest[..start + len + CLOSE.len()]),
            }
            rest = &rest[start + len + CLOSE.len()..];
        }
        content.push_str(rest);
        (content.trim().to_string(), calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } })
    }

    #[test]
    fn calls_are_read_out_of_the_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>";
        let (content, calls) = ToolFormat::Hermes.parse(text);
        assert_eq!(calls, vec![ToolCall { name: "get_weather".into(), arguments: json!({ "city": "Paris" }) }]);
        assert_eq!(content, "Let me check.\n\n<tool_call>\nnot json\n</tool_call>");
        assert_eq!(ToolFormat::Hermes.parse("no calls"), ("no calls".to_string(), vec![]));
    }

    #[test]
    fn a_required_call_has_a_schema_and_bad_tools_are_refused() {
        let tools = Tools::new(vec![weather()], ToolChoice::Required).unwrap();
        let (open, schema, close) = ToolFormat::Hermes.call_schema(&tools).unwrap();
        assert_eq!((open, close), ("<tool_call>\n", "\n</tool_call>"));
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
        assert!(ToolFormat::Hermes.call_schema(&Tools::new(vec![weather()], ToolChoice::Auto).unwrap()).is_none());
        assert!(Tools::new(vec![json!({ "type": "function" })], ToolChoice::Auto).is_err());
        assert!(Tools::new(vec![weather()], ToolChoice::Function("nope".into())).is_err());
        assert!(Tools::new(vec![weather(), weather()], ToolChoice::Auto).is_err());
        assert_eq!(ToolFormat::of_template("{% for t in tools %}<tool_call>{{ t }}</tool_call>{% endfor %}"), Some(ToolFormat::Hermes));
        assert_eq!(ToolFormat::of_template("{{ messages }}"), None);
    }
}
