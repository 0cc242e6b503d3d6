//! The core's one error type. Every fallible path in the engine returns it;
//! the wasm boundary (`src/wasm.rs`) maps it to `JsError` in one place.

/// Everything that can go wrong in kvchat, each with a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a GGUF file we can read (bad magic, truncated, absurd sizes).
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    /// The GGUF is well formed but describes a model we do not run.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A required metadata key is missing or has the wrong type.
    #[error("missing or invalid metadata `{key}`: {reason}")]
    Metadata { key: String, reason: String },
    /// A tensor is missing or its shape disagrees with the hyper-parameters.
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    /// Loading would need more memory than the budget allows.
    #[error("out of memory budget: {0}")]
    Memory(String),
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template is missing, unsupported, or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A request option is out of range (temperature, window, max tokens, ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The prompt cannot be generated from (for example, it is empty).
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),
    /// The caller cancelled the generation.
    #[error("generation aborted")]
    Aborted,
    /// The WebGPU backend could not start or run (no adapter, too small, a failed step).
    #[error("WebGPU: {0}")]
    Gpu(String),
    /// The GPU device was lost mid-conversation (the engine can continue on the CPU).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// An error inside the tensor library: a bug in kvchat if it ever reaches a user.
    #[error("tensor backend: {0}")]
    Backend(String),

    #[error("saved session: {0}")]
    Session(String),
    /// Structured output cannot go on: no token satisfies the grammar at this
    /// step (the grammar itself is checked when the request starts: `InvalidOption`).
    #[error("constraint: {0}")]
    Constraint(String),
}

impl Error {
    /// A stable short name for the kind of error (the JS API exposes it as `error.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Gguf(_) => "gguf",
            Error::Unsupported(_) => "unsupported",
            Error::Metadata { .. } => "metadata",
            Error::Tensor { .. } => "tensor",
            Error::Memory(_) => "memory",
            Error::Tokenizer(_) => "tokenizer",
            Error::ChatTemplate(_) => "chat-template",
            Error::InvalidOption(_) => "invalid-option",
            Error::InvalidPrompt(_) => "invalid-prompt",
            Error::Aborted => "aborted",
            Error::Gpu(_) => "gpu",
            Error::DeviceLost(_) => "device-lost",
            Error::Backend(_) => "backend",
            Error::Session(_) => "session",
            Error::Constraint(_) => "constraint",
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
