//! Chat messages → the model's prompt text, rendered from the GGUF's own
//! `tokenizer.chat_template` (Jinja) with minijinja, whatever the template.
//!
//! The template is untrusted input, so rendering is bounded: a fuel limit (minijinja
//! instructions), a recursion limit and a cap on the output's size turn an endless
//! loop, runaway recursion or a huge output into [`Error::ChatTemplate`].
//! The environment follows Hugging Face's `apply_chat_template`: `trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods, `raise_exception`,
//! `strftime_now`, `tojson`, and `tools` (none, or a request's tools where the
//! template takes them: [`tools`]).

mod strftime;
mod tojson;
pub mod tools;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tools::ToolFormat;

/// Instructions one rendering may run: far above any real template on a long
/// conversation (tens of instructions per message), far below a second of work.
const FUEL: u64 = 2_000_000;
/// Nesting (blocks count 1, macro calls and includes about 10) before rendering stops.
const RECURSION_LIMIT: usize = 200;
/// The output may be this much longer than the messages it renders.
const OUTPUT_SLACK: usize = 1 << 20;

/// One chat message (`tool` messages carry a tool's result; an `assistant`
/// message may carry the calls it made, `[{ type, function: { name, arguments } }]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None }
    }
}

/// The model's template, compiled once (at load) into its own minijinja environment.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
    /// How the template writes tool calls (None: it takes no tools).
    tool_format: Option<ToolFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos", &self.bos).field("eos", &self.eos).finish()
    }
}

/// A writer that refuses to grow past `limit` bytes (an error stops the rendering).
struct Bounded {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("output too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bounded environment with Hugging Face's settings and helpers.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |format: String| strftime::format(&format, strftime::now()));
    env.add_filter("tojson", tojson::tojson);
    env
}

impl ChatTemplate {
    /// `bos`/`eos` are the texts of the model's BOS/EOS tokens (templates may print them).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = environment();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::ChatTemplate(format!("the model's template does not parse: {e}")))?;
        let t = Self { env, bos: bos.into(), eos: eos.into(), tool_format: ToolFormat::of_template(source) };
        // Fail at load, not at the first message, if the template does not render.
        t.render(&[Message::new("user", "hi")], true)?;
        Ok(t)
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// How this template writes tool calls; None when it takes no tools.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// [`render`](Self::render) with a request's tools (OpenAI's function specs) described
    /// to the model as its template does; a template without tools refuses them.
    pub fn render_with_tools(&self, messages: &[Message], tools: Option<&[serde_json::Value]>, add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidPrompt("no messages".into()));
        }
        let takes_tools = self.tool_format.is_some();
        if tools.is_some() && !takes_tools {
            return Err(Error::Unsupported("this model's chat template does not take tools".into()));
        }
        for m in messages {
            let tool_role = m.role == "tool" || m.tool_calls.is_some();
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") || (tool_role && !takes_tools) {
                let roles = if takes_tools { "system, user, assistant or tool" } else { "system, user or assistant" };
                return Err(Error::InvalidPrompt(format!("unknown role `{}` (use {roles})", m.role)));
            }
            if m.tool_calls.is_some() && m.role != "assistant" {
                return Err(Error::InvalidPrompt("only assistant messages carry tool calls".into()));
            }
        }
        let tmpl = self.env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let described: usize = tools.map_or(0, |t| t.iter().map(|t| t.to_string().len()).sum());
        let input: usize = messages.iter().map(|m| m.content.len()).sum::<usize>() + described;
        let mut out = Bounded { out: Vec::new(), limit: input.saturating_mul(4).saturating_add(OUTPUT_SLACK) };
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
            tools => tools,
        };
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.out).map_err(|_| Error::ChatTemplate("the template wrote invalid UTF-8".into())),
            Err(e) if e.kind() == minijinja::ErrorKind::WriteFailure => {
                Err(Error::ChatTemplate(format!("the rendered prompt exceeds {} bytes", out.limit)))
            }
            Err(e) => Err(Error::ChatTemplate(format!("rendering failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
