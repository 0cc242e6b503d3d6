//! The output flags of `generate` and `batch`: a response format read from a
//! file (`--json-schema`, `--grammar`) or given inline (`--json-object`,
//! `--regex`), and `--logprobs N`; and the JSON the CLI prints for log-probabilities.

use clap::Args;
use kvchat::sampler::constraint::OutputFormat;
use kvchat::sampler::logprobs::TokenLogprob;
use std::path::PathBuf;

#[derive(Args, Clone, Default)]
pub struct OutputArgs {
    /// Output valid JSON for this JSON schema (a file).
    #[arg(long, conflicts_with_all = ["grammar", "regex", "json_object"])]
    pub json_schema: Option<PathBuf>,
    /// Output any JSON object.
    #[arg(long, conflicts_with_all = ["grammar", "regex"])]
    pub json_object: bool,
    /// Output text of this grammar (a file, llguidance's Lark dialect: `start: ...`).
    #[arg(long, conflicts_with = "regex")]
    pub grammar: Option<PathBuf>,
    /// Output text matching this regular expression.
    #[arg(long)]
    pub regex: Option<String>,
    /// Report each generated token's log-probability and this many alternatives (0 to 20).
    #[arg(long)]
    pub logprobs: Option<usize>,
}

impl OutputArgs {
    /// The response format the flags ask for (files read here: the core never touches files).
    pub fn format(&self) -> Result<Option<OutputFormat>, Box<dyn std::error::Error>> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        Ok(if let Some(p) = &self.json_schema {
            Some(OutputFormat::json_schema(&read(p)?)?)
        } else if self.json_object {
            Some(OutputFormat::JsonObject)
        } else if let Some(p) = &self.grammar {
            Some(OutputFormat::Lark(read(p)?))
        } else {
            self.regex.clone().map(OutputFormat::Regex)
        })
    }
}

/// Log-probabilities as JSON (OpenAI's `logprobs.content` shape).
pub fn logprobs_json(logprobs: &[TokenLogprob]) -> serde_json::Value {
    let alt = |a: &kvchat::sampler::logprobs::Alternative| {
        serde_json::json!({ "token": String::from_utf8_lossy(&a.bytes), "id": a.token, "logprob": a.logprob, "bytes": a.bytes })
    };
    logprobs
        .iter()
        .map(|t| {
            let mut v = alt(&t.chosen);
            v["top_logprobs"] = t.top.iter().map(alt).collect();
            v
        })
        .collect()
}
