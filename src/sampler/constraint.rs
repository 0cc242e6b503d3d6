//! Structured output: a grammar (a JSON schema, any JSON object, a Lark
//! grammar or a regular expression) enforced at every sampling step by a
//! token mask. The grammar engine is llguidance (the one llama.cpp embeds);
//! this file gives it the model's vocabulary and turns its masks into logits.
//!
//! [`Grammars`] is built once per tokenizer (a byte trie over the
//! vocabulary, built on the first constrained request); [`Constraint`] is one
//! request's parser state, advanced token by token.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;
use web_time::Instant;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON document valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark dialect (`start: ...`).
    Lark(String),
    /// A regular expression the whole output matches.
    Regex(String),
}

impl OutputFormat {
    /// The JSON schema text of `--json-schema`, checked to be JSON.
    pub fn json_schema(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map(OutputFormat::JsonSchema)
            .map_err(|e| Error::InvalidOption(format!("the JSON schema is not JSON: {e}")))
    }

    /// JSON valid for `schema` between two fixed texts (a tool call between its tags).
    pub fn json_between(open: &str, schema: serde_json::Value, close: &str) -> Self {
        let literal = |t: &str| serde_json::Value::String(t.to_string()).to_string();
        OutputFormat::Lark(format!("start: {} body {}\nbody: %json {}", literal(open), literal(close), compact(schema)))
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            OutputFormat::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            OutputFormat::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact(s.clone())),
            OutputFormat::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            OutputFormat::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }
}

/// Fractional digits a JSON number may have unless its schema says otherwise.
const MAX_FRACTION_DIGITS: i32 = 6;

/// JSON is written compactly, one space after `,` and `:` and nowhere else,
/// unless the schema sets its own `x-guidance` options: with free whitespace
/// a small model can pad a document with newlines until it runs out of tokens.
/// Numbers get at most [`MAX_FRACTION_DIGITS`] decimals for the same reason
/// (SmolLM2 at temperature 0.7 once wrote `0.72427737823559283822538232323…`
/// until its budget ran out): every output still satisfies the schema.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    bound_fractions(&mut schema);
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
        });
    }
    schema
}

/// Adds `multipleOf: 1e-6` to every `number` subschema that has no `multipleOf`
/// (literal values under `const`, `enum`, `default` and `examples` are data, not schemas).
fn bound_fractions(schema: &mut serde_json::Value) {
    use serde_json::Value;
    match schema {
        Value::Object(obj) => {
            let is_number = match obj.get("type") {
                Some(Value::String(t)) => t == "number",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "number"),
                _ => false,
            };
            if is_number && !obj.contains_key("multipleOf") {
                obj.insert("multipleOf".into(), serde_json::json!(10f64.powi(-MAX_FRACTION_DIGITS)));
            }
            for (key, value) in obj.iter_mut() {
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    bound_fractions(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_fractions),
        _ => {}
    }
}

/// The vocabulary as llguidance sees it: every token's bytes, control
/// tokens marked so no grammar can produce them by spelling their text.
struct VocabularyEnv {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for VocabularyEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Text through the model's own tokenizer; bytes that are not UTF-8 (a
    /// lexeme cut inside a character) through the trie's greedy split.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode_part_text(text).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The grammar compiler of one vocabulary.
pub struct Grammars {
    factory: ParserFactory,
    /// End-of-generation tokens: allowed exactly when the grammar may end.
    eog: Vec<u32>,
    /// The token llguidance treats as its end of sequence.
    eos: u32,
    /// Building the vocabulary trie, in ms.
    pub build_ms: f64,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("eos", &self.eos).field("build_ms", &self.build_ms).finish()
    }
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let t0 = Instant::now();
        let n = tokenizer.vocab_size();
        let eog = tokenizer.eog_ids().to_vec();
        let eos = tokenizer.eos().or_else(|| eog.first().copied()).ok_or_else(|| {
            Error::Unsupported("structured output needs an end-of-generation token and the model has none".into())
        })?;
        let words: Vec<Vec<u8>> = (0..n as u32).map(|id| token_word(&tokenizer, id)).collect();
        let info = TokRxInfo { tok_bos: tokenizer.bos(), ..TokRxInfo::new(n as u32, eos) };
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(VocabularyEnv { tokenizer, trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Tokenizer(format!("the grammar engine refused the vocabulary: {e}")))?;
        factory.quiet();
        Ok(Grammars { factory, eog, eos, build_ms: t0.elapsed().as_secs_f64() * 1000.0 })
    }

    /// Compiles `format` for one request: an invalid schema, grammar or
    /// expression is an [`Error::InvalidOption`] naming what is wrong.
    pub fn compile(&self, format: &OutputFormat) -> Result<Constraint> {
        let t0 = Instant::now();
        let parser = self.factory.create_parser(format.grammar()).map_err(|e| Error::InvalidOption(format!("response format: {}", first_line(&e.to_string()))))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidOption(format!("response format: {}", first_line(&e))));
        }
        Ok(Constraint { matcher, eog: self.eog.clone(), eos: self.eos, compile_ms: t0.elapsed().as_secs_f64() * 1000.0, mask_ms: 0.0 })
    }
}

/// A token's bytes for the trie: what it prints; a control token's (or an
/// empty token's) text behind llguidance's special-token marker.
fn token_word(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    let bytes = tokenizer.token_bytes(id);
    if !tokenizer.is_special(id) && !bytes.is_empty() {
        return bytes.to_vec();
    }
    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    match tokenizer.token_text(id) {
        Some(t) if !t.is_empty() => word.extend_from_slice(t.as_bytes()),
        _ => word.extend_from_slice(format!("<[{id}]>").as_bytes()),
    }
    word
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// One request's grammar state.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    eog: Vec<u32>,
    eos: u32,
    /// Compiling the grammar, in ms.
    pub compile_ms: f64,
    /// Computing masks so far, in ms.
    pub mask_ms: f64,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).field("compile_ms", &self.compile_ms).finish()
    }
}

impl Constraint {
    /// Sets every logit the grammar forbids at this step to -inf (the end of
    /// generation tokens are allowed only where the grammar may end). A step
    /// where nothing is allowed is an [`Error::Constraint`].
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let t0 = Instant::now();
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| Error::Constraint(first_line(&e.to_string()).to_string()))?;
        let may_end = allowed.is_allowed(self.eos);
        let mut any = false;
        for (id, logit) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let ok = if self.eog.contains(&id) { may_end } else { id != self.eos && allowed.is_allowed(id) };
            if ok {
                any |= *logit > f32::NEG_INFINITY;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        self.mask_ms += t0.elapsed().as_secs_f64() * 1000.0;
        if !any {
            return Err(Error::Constraint("no token satisfies the response format here".into()));
        }
        Ok(())
    }

    /// Advances the grammar by a chosen (non end-of-generation) token.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| Error::Constraint(first_line(&e.to_string()).to_string()))
    }

    /// The grammar is complete and nothing can follow: the output is done.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
