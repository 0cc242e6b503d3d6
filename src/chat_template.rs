//! Chat messages → the model's prompt text, rendered from the GGUF's own
//! `tokenizer.chat_template` (Jinja) with minijinja.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Template families kvchat knows and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateFamily {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen, …).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
    /// `<|user|>\n…</s>` (Zephyr, TinyLlama chat).
    Zephyr,
}

impl TemplateFamily {
    pub fn detect(template: &str) -> Result<Self> {
        if template.contains("<|im_start|>") {
            Ok(Self::ChatMl)
        } else if template.contains("<|start_header_id|>") {
            Ok(Self::Llama3)
        } else if template.contains("<|user|>") {
            Ok(Self::Zephyr)
        } else {
            Err(Error::ChatTemplate(
                "unsupported chat template family (kvchat supports ChatML, Llama 3 and Zephyr); pass a raw prompt instead"
                    .into(),
            ))
        }
    }
}

/// The model's template, compiled once (at load) into its own minijinja environment.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    family: TemplateFamily,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("family", &self.family).finish()
    }
}

impl ChatTemplate {
    /// `bos`/`eos` are the texts of the model's BOS/EOS tokens (templates may print them).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let family = TemplateFamily::detect(source)?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::ChatTemplate(format!("the model's template does not parse: {e}")))?;
        let t = Self { env, family, bos: bos.into(), eos: eos.into() };
        // Fail at load, not at the first message, if the template does not compile.
        t.render(&[Message::new("user", "hi")], true)?;
        Ok(t)
    }

    pub fn family(&self) -> TemplateFamily {
        self.family
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidPrompt("no messages".into()));
        }
        for m in messages {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(Error::InvalidPrompt(format!(
                    "unknown role `{}` (use system, user or assistant)",
                    m.role
                )));
            }
        }
        let tmpl = self.env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| Error::ChatTemplate(format!("rendering failed: {e}")))
    }
}
