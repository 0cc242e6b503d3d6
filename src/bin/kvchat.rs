//! `kvchat`: the native command line. Only this layer reads files.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // candle's small ops (softmax, norms, RoPE) run on rayon's pool; making this
    // thread a worker of it lets them run inline instead of handing every op to
    // another thread. One thread unless CANDLE_NUM_THREADS says otherwise.
    let threads = std::env::var("CANDLE_NUM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global();
    kvchat::backend::cpu::set_threads(threads);
    if let Err(e) = cli::run() {
        eprintln!("kvchat: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[path = "kvchat/info.rs"]
mod info;

#[cfg(not(target_arch = "wasm32"))]
#[path = "kvchat/format.rs"]
mod format;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use crate::format::{logprobs_json, OutputArgs};
    use clap::{Args, Parser, Subcommand};
    use kvchat::{ColdBits, ColdConfig, Engine, EngineOptions, GenerateOptions, KvCacheConfig, KvDType, Message, Prompt, SamplerConfig};
    use std::io::{BufRead, Write};
    use std::path::PathBuf;

    #[derive(Parser)]
    #[command(name = "kvchat", version, about = "A small LLM with a bounded sliding-window KV cache")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Args, Clone)]
    struct ModelArgs {
        /// Path to a llama-family GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// KV cache capacity in tokens.
        #[arg(long, default_value_t = 2048)]
        kv_window: usize,
        /// Leading tokens never evicted (attention sinks).
        #[arg(long, default_value_t = 4)]
        kv_sinks: usize,
        /// Store K/V as f16 instead of f32.
        #[arg(long)]
        kv_f16: bool,
        /// Tokens the compressed cold tier keeps after they leave the window (0: none, they are dropped).
        #[arg(long, default_value_t = 0)]
        kv_cold: usize,
        /// Bits per cold key and value: 8 or 4.
        #[arg(long, default_value_t = 8)]
        kv_cold_bits: u32,
        /// Tokens recalled from the cold tier per step, for each layer and kv head.
        #[arg(long, default_value_t = 512)]
        kv_recall: usize,
        /// `cpu`, `webgpu` (wgpu: Vulkan/Metal/DX12) or `auto` (the GPU when one is found).
        #[arg(long, default_value = "cpu")]
        backend: String,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Generate text from a raw prompt.
        Generate(GenerateArgs),
        /// Interactive chat that keeps the cache across turns.
        Chat(ChatArgs),
        /// Print the token ids of a text (special tokens parsed).
        Tokenize(TokenizeArgs),
        /// Perplexity of a text file fed through the bounded cache.
        Perplexity(PerplexityArgs),
        /// Run many prompts as a batch. FILE.jsonl: one JSON object per line, {"prompt": "..."}
        /// (raw text) or {"messages": [{"role": ..., "content": ...}]}, optionally with its own
        /// "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos".
        Batch(BatchArgs),
        /// Prefill and decode speed, median of several runs after a warm-up.
        Bench(BenchArgs),
        /// What a GGUF holds: architecture, hyper-parameters, layer kinds, tensor types and
        /// their kernels, tokenizer, chat template, KV bytes per token.
        Info(InfoArgs),
    }

    // The flags of `info`.
    #[derive(Args)]
    struct InfoArgs {
        /// Path to a GGUF file.
        #[arg(long)]
        model: PathBuf,
    }

    // The flags of `generate` (the help text is the variant's doc comment above).
    #[derive(Args)]
    struct GenerateArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, conflicts_with = "prompt_file")]
        prompt: Option<String>,
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        #[arg(long, default_value_t = 0.05)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Recompute the whole sequence at every step (shows what the cache saves).
        #[arg(long)]
        no_cache: bool,
        #[arg(long)]
        ignore_eos: bool,
        /// Print one JSON line instead of streaming text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        output: OutputArgs,
    }

    // The flags of `chat`.
    #[derive(Args)]
    struct ChatArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Optional system prompt (the template's default otherwise).
        #[arg(long)]
        system: Option<String>,
        /// Continue the conversation saved in FILE (if it exists) and save it there after
        /// every turn: the whole KV cache (window, cold tier, token ids) in FILE, the messages
        /// in FILE.messages.json. The next run starts with no re-prefill.
        #[arg(long)]
        session: Option<PathBuf>,
    }

    // The flags of `tokenize`.
    #[derive(Args)]
    struct TokenizeArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, conflicts_with = "text_file")]
        text: Option<String>,
        #[arg(long)]
        text_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    }

    // The flags of `perplexity`.
    #[derive(Args)]
    struct PerplexityArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        file: PathBuf,
        /// Score at most this many tokens of the file.
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Tokens per forward pass (default: the engine's); 1 scores the text as decode
        /// steps would run it (the cold tier recalls as it does when generating).
        #[arg(long)]
        prefill_chunk: Option<usize>,
        #[arg(long)]
        json: bool,
    }

    // The flags of `batch`.
    #[derive(Args)]
    struct BatchArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        prompts_file: PathBuf,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// KV window of each sequence (default: min(--kv-window, 512)).
        #[arg(long)]
        seq_window: Option<usize>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        ignore_eos: bool,
        /// Do not prefill the prefix shared by every prompt once.
        #[arg(long)]
        no_share_prefix: bool,
        #[arg(long)]
        json: bool,
        /// Also print where the forward passes' time went (ms per token, prefill and decode together).
        #[arg(long)]
        profile: bool,
        #[command(flatten)]
        output: OutputArgs,
    }

    // The flags of `bench`.
    #[derive(Args)]
    struct BenchArgs {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        gen: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
        /// Also print where a prefill token's and a decode token's time goes, per operation.
        #[arg(long)]
        profile: bool,
    }

    type R<T> = Result<T, Box<dyn std::error::Error>>;

    /// The cache the `--kv-*` options describe, with `window` tokens.
    fn kv_config(m: &ModelArgs, window: usize) -> R<KvCacheConfig> {
        let cold = match m.kv_cold {
            0 => None,
            capacity => Some(ColdConfig { capacity, bits: ColdBits::from_bits(m.kv_cold_bits)?, recall: m.kv_recall }),
        };
        Ok(KvCacheConfig { window, sinks: m.kv_sinks, dtype: if m.kv_f16 { KvDType::F16 } else { KvDType::F32 }, cold })
    }

    /// Reads the model file and loads it on the backend `--backend` names.
    fn load(m: &ModelArgs) -> R<Engine> {
        load_with(m, EngineOptions::default().prefill_chunk)
    }

    /// [`load`] with `prefill_chunk` tokens per forward pass.
    fn load_with(m: &ModelArgs, prefill_chunk: usize) -> R<Engine> {
        let bytes = std::fs::read(&m.model).map_err(|e| format!("cannot read {}: {e}", m.model.display()))?;
        let opts = EngineOptions { kv: kv_config(m, m.kv_window)?, prefill_chunk, ..Default::default() };
        match m.backend.as_str() {
            "cpu" => Ok(Engine::load(&bytes, opts)?),
            "webgpu" | "auto" => match kvchat::backend::webgpu::GpuContext::new_blocking()
                .and_then(|ctx| {
                    // A software adapter (lavapipe) is slower than the CPU backend: 'auto' skips it.
                    if m.backend == "auto" && ctx.info.device_type == "Cpu" {
                        return Err(kvchat::Error::Gpu(format!("only a software adapter ({})", ctx.info.name)));
                    }
                    Ok(ctx)
                })
                .and_then(|ctx| Engine::load_gpu(bytes.clone(), opts.clone(), &ctx))
            {
                Ok(e) => {
                    eprintln!("backend: webgpu on {}", e.adapter().map(|a| a.name.as_str()).unwrap_or("?"));
                    Ok(e)
                }
                Err(err) if m.backend == "auto" => {
                    eprintln!("backend: cpu (no usable GPU: {err})");
                    Ok(Engine::load(&bytes, opts)?)
                }
                Err(err) => Err(err.into()),
            },
            other => Err(format!("--backend must be cpu, webgpu or auto (got `{other}`)").into()),
        }
    }

    /// The text given inline, or else read from its file.
    fn text_arg(text: Option<String>, file: Option<PathBuf>, what: &str) -> R<String> {
        match (text, file) {
            (Some(t), _) => Ok(t),
            (None, Some(f)) => Ok(std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?),
            (None, None) => Err(format!("give --{what} or --{what}-file").into()),
        }
    }

    /// The middle value of the sorted runs (the upper middle of an even count).
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    /// Runs the subcommand the command line names.
    pub fn run() -> R<()> {
        match Cli::parse().cmd {
            Cmd::Generate(a) => generate(a),
            Cmd::Chat(a) => chat(a),
            Cmd::Tokenize(a) => tokenize(a),
            Cmd::Perplexity(a) => perplexity(a),
            Cmd::Batch(a) => batch(a),
            Cmd::Bench(a) => bench(a),
            Cmd::Info(a) => {
                let bytes = std::fs::read(&a.model).map_err(|e| format!("cannot read {}: {e}", a.model.display()))?;
                print!("{}", crate::info::report(&bytes)?);
                Ok(())
            }
        }
    }

    /// Writes one piece of generated text to stdout and flushes it.
    fn print_piece(piece: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    }

    /// `generate`: streams the continuation of a raw prompt, or prints it as one JSON line.
    fn generate(a: GenerateArgs) -> R<()> {
        let GenerateArgs {
            m, prompt, prompt_file, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, no_cache, ignore_eos, json, output,
        } = a;
        let prompt = text_arg(prompt, prompt_file, "prompt")?;
        let mut engine = load(&m)?;
        let opts = GenerateOptions {
            max_tokens,
            sampler: SamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty, seed, ..Default::default() },
            stop: Vec::new(),
            ignore_eos,
            no_cache,
            format: output.format()?,
            logprobs: output.logprobs,
            ..Default::default()
        };
        let g = engine.generate(Prompt::Raw(&prompt), &opts, |piece| {
            if !json {
                print_piece(piece);
            }
            true
        })?;
        if json {
            // Serialized from the result as it is (a `json!` value held a 32-byte `Value`
            // per token id: 6 MB more at the end of a 200,000-token run).
            #[derive(serde::Serialize)]
            struct Out<'a, S: serde::Serialize, K: serde::Serialize> {
                prompt_ids: &'a [u32],
                generated_ids: &'a [u32],
                text: &'a str,
                stop_reason: &'a S,
                prefill_tokens_per_sec: f64,
                decode_tokens_per_sec: f64,
                time_to_first_token_ms: f64,
                grammar_compile_ms: f64,
                mask_ms: f64,
                kv: &'a K,
                logprobs: Option<serde_json::Value>,
            }
            let out = Out {
                prompt_ids: &g.prompt_ids,
                generated_ids: &g.generated_ids,
                text: &g.text,
                stop_reason: &g.stop_reason,
                prefill_tokens_per_sec: g.stats.prefill_tokens_per_sec,
                decode_tokens_per_sec: g.stats.decode_tokens_per_sec,
                time_to_first_token_ms: g.stats.time_to_first_token_ms,
                grammar_compile_ms: g.stats.grammar_compile_ms,
                mask_ms: g.stats.mask_ms,
                kv: &g.kv,
                logprobs: output.logprobs.map(|_| logprobs_json(&g.logprobs)),
            };
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &out)?;
            writeln!(stdout)?;
        } else {
            println!();
            eprintln!(
                "[{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s; kv {}/{} used, {} evicted]",
                g.stats.prompt_tokens, g.stats.generated_tokens, g.stats.prefill_tokens_per_sec,
                g.stats.decode_tokens_per_sec, g.kv.used, g.kv.capacity, g.kv.evicted
            );
        }
        Ok(())
    }

    /// `chat`: reads user turns from stdin until an empty line or end of input; `/reset` starts over.
    fn chat(a: ChatArgs) -> R<()> {
        let ChatArgs { m, max_tokens, temperature, seed, system, session } = a;
        let mut engine = load(&m)?;
        let mut messages: Vec<Message> = system.into_iter().map(|s| Message::new("system", s)).collect();
        let messages_path = session.as_ref().map(|p| p.with_extension("messages.json"));
        if let (Some(path), Some(mpath)) = (&session, &messages_path) {
            if path.exists() {
                let t = std::time::Instant::now();
                engine.restore_session(&std::fs::read(path)?)?;
                messages = serde_json::from_slice(&std::fs::read(mpath)?)?;
                eprintln!("kvchat: restored {} messages and {} cached tokens from {} in {:.0} ms", messages.len(), engine.cached_tokens().len(), path.display(), t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let opts = GenerateOptions {
            max_tokens,
            sampler: SamplerConfig { temperature, seed, ..Default::default() },
            ..Default::default()
        };
        eprintln!("kvchat: {} layers, kv window {} (sinks {}). Empty line or Ctrl-D quits, /reset starts over.",
            engine.config().n_layer, m.kv_window, m.kv_sinks);
        let stdin = std::io::stdin();
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if line.trim() == "/reset" {
                messages.retain(|m| m.role == "system");
                engine.reset();
                continue;
            }
            messages.push(Message::new("user", line.trim_end_matches(['\n', '\r'])));
            let reply = chat_turn(&mut engine, &messages, &opts)?;
            messages.push(Message::new("assistant", reply));
            if let (Some(path), Some(mpath)) = (&session, &messages_path) {
                std::fs::write(path, engine.save_session()?)?;
                std::fs::write(mpath, serde_json::to_vec(&messages)?)?;
            }
        }
        Ok(())
    }

    /// One chat turn: streams the reply to the conversation so far, prints its stats, returns its text.
    fn chat_turn(engine: &mut Engine, messages: &[Message], opts: &GenerateOptions) -> R<String> {
        let g = engine.generate(Prompt::Chat(messages), opts, |piece| {
            print_piece(piece);
            true
        })?;
        println!();
        eprintln!(
            "[{} new prompt tokens ({} reused), {} generated; prefill {:.1} tok/s, decode {:.1} tok/s; kv {}/{}, {} evicted]",
            g.stats.prompt_tokens - g.stats.reused_tokens, g.stats.reused_tokens, g.stats.generated_tokens,
            g.stats.prefill_tokens_per_sec, g.stats.decode_tokens_per_sec, g.kv.used, g.kv.capacity, g.kv.evicted
        );
        Ok(g.text)
    }

    /// `tokenize`: prints a text's token ids, one per line with its text, or as JSON.
    fn tokenize(a: TokenizeArgs) -> R<()> {
        let TokenizeArgs { m, text, text_file, json } = a;
        let text = text_arg(text, text_file, "text")?;
        let engine = load(&m)?;
        let ids = engine.tokenize(&text)?;
        if json {
            println!("{}", serde_json::json!({ "ids": ids }));
        } else {
            for id in ids {
                println!("{id}\t{:?}", engine.detokenize(&[id]));
            }
        }
        Ok(())
    }

    /// `perplexity`: scores a text file through the bounded cache, with a running figure on stderr.
    fn perplexity(a: PerplexityArgs) -> R<()> {
        let PerplexityArgs { m, file, max_tokens, prefill_chunk, json } = a;
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut engine = load_with(&m, prefill_chunk.unwrap_or(EngineOptions::default().prefill_chunk))?;
        let mut ids = engine.tokenize(&text)?;
        if let Some(n) = max_tokens {
            ids.truncate(n);
        }
        if ids.len() < 2 {
            return Err("the file has fewer than two tokens".into());
        }
        let (n, nll) = engine.perplexity(&ids, |done, nll| {
            if !json {
                eprint!("\r{done} tokens, running ppl {:.3}", (nll / done as f64).exp());
            }
        })?;
        let mean = nll / n as f64;
        if json {
            println!("{}", serde_json::json!({
                "tokens": n, "mean_nll": mean, "ppl": mean.exp(),
                "kv_window": m.kv_window, "kv_sinks": m.kv_sinks, "kv_f16": m.kv_f16,
                "kv_cold": m.kv_cold, "kv_cold_bits": m.kv_cold_bits, "kv_recall": m.kv_recall,
            }));
        } else {
            eprintln!();
            println!("tokens {n}  mean_nll {mean:.5}  ppl {:.4}", mean.exp());
        }
        Ok(())
    }

    /// `batch`: decodes every prompt of a JSONL file in one continuous batch, printing each as it finishes.
    fn batch(a: BatchArgs) -> R<()> {
        let text = std::fs::read_to_string(&a.prompts_file).map_err(|e| format!("cannot read {}: {e}", a.prompts_file.display()))?;
        let mut engine = load(&a.m)?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", a.prompts_file.display(), i + 1)))
            .collect::<Result<_, _>>()?;
        let format = a.output.format()?;
        let mut messages: Vec<Option<Vec<Message>>> = Vec::new();
        let mut inputs_opts = Vec::new();
        for (i, v) in lines.iter().enumerate() {
            messages.push(batch_line_messages(i, v)?);
            inputs_opts.push(batch_line_options(v, &a, &format));
        }
        let inputs: Vec<(Prompt, GenerateOptions)> = lines
            .iter()
            .zip(&messages)
            .zip(inputs_opts)
            .map(|((v, msgs), o)| match msgs {
                Some(m) => (Prompt::Chat(m), o),
                None => (Prompt::Raw(v["prompt"].as_str().unwrap_or("")), o),
            })
            .collect();
        let kv = kv_config(&a.m, a.seq_window.unwrap_or(a.m.kv_window.min(512)))?;
        let bopts = kvchat::BatchOptions { batch_size: a.batch, kv: Some(kv), share_prefix: !a.no_share_prefix };
        let mut b = engine.start_batch(&inputs, bopts)?;
        engine.set_profiling(a.profile);
        decode_batch(&mut engine, &mut b, a.json, a.output.logprobs.is_some())?;
        print_batch_summary(&engine, &b.stats(), a.profile, a.json);
        Ok(())
    }

    /// A batch line's chat messages (None for a raw `"prompt"`); an error names the line.
    fn batch_line_messages(i: usize, v: &serde_json::Value) -> R<Option<Vec<Message>>> {
        Ok(match v.get("messages") {
            Some(m) => Some(serde_json::from_value::<Vec<Message>>(m.clone()).map_err(|e| format!("line {}: messages: {e}", i + 1))?),
            None if v.get("prompt").and_then(|p| p.as_str()).is_some() => None,
            None => return Err(format!("line {}: needs \"prompt\" (a string) or \"messages\"", i + 1).into()),
        })
    }

    /// A batch line's generation options: its own keys where given, the command line's (or the defaults) otherwise.
    fn batch_line_options(v: &serde_json::Value, a: &BatchArgs, format: &Option<kvchat::sampler::constraint::OutputFormat>) -> GenerateOptions {
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let sampler = SamplerConfig {
            temperature: f("temperature").map(|x| x as f32).unwrap_or(a.temperature),
            top_k: f("top_k").map(|x| x as usize).unwrap_or(0),
            top_p: f("top_p").map(|x| x as f32).unwrap_or(1.0),
            seed: v.get("seed").and_then(|x| x.as_u64()),
            ..Default::default()
        };
        let stop = v.get("stop").and_then(|s| serde_json::from_value::<Vec<String>>(s.clone()).ok()).unwrap_or_default();
        GenerateOptions {
            max_tokens: f("max_tokens").map(|x| x as usize).unwrap_or(a.max_tokens),
            sampler,
            stop,
            ignore_eos: v.get("ignore_eos").and_then(|x| x.as_bool()).unwrap_or(a.ignore_eos),
            no_cache: false,
            format: format.clone(),
            logprobs: a.output.logprobs,
            ..Default::default()
        }
    }

    /// Steps the batch to the end, printing each sequence (text or a JSON line) when it finishes.
    fn decode_batch(engine: &mut Engine, b: &mut kvchat::Batch, json: bool, logprobs: bool) -> R<()> {
        while !b.is_done() {
            for ev in engine.step_batch(b)? {
                if let kvchat::BatchEvent::Done { index, generation: g } = ev {
                    if json {
                        let mut line = serde_json::json!({
                            "index": index, "text": g.text, "generated_tokens": g.stats.generated_tokens,
                            "stop_reason": g.stop_reason, "time_to_first_token_ms": g.stats.time_to_first_token_ms,
                            "grammar_compile_ms": g.stats.grammar_compile_ms, "mask_ms": g.stats.mask_ms,
                        });
                        if logprobs {
                            line["logprobs"] = logprobs_json(&g.logprobs);
                        }
                        println!("{line}");
                    } else {
                        println!("[{index}] {}\n", g.text.trim());
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch's profile (with `--profile`, on stderr) and its throughput (JSON on stdout, or a line on stderr).
    fn print_batch_summary(engine: &Engine, st: &kvchat::BatchStats, profile: bool, json: bool) {
        if let Some(p) = engine.profile().filter(|_| profile) {
            let ops: serde_json::Map<String, serde_json::Value> =
                p.per_token_ms().into_iter().map(|(name, ms)| (name.to_string(), serde_json::json!((ms * 1000.0).round() / 1000.0))).collect();
            eprintln!("{}", serde_json::json!({ "profile": "batch", "tokens": p.tokens, "ops_ms_per_token": ops }));
        }
        if json {
            println!("{}", serde_json::json!({ "batch_stats": st }));
        } else {
            eprintln!(
                "{} sequences, batch {}, {} tokens in {:.2} s: {:.1} tok/s overall, {:.1} tok/s in batched decode; {} shared prefix tokens; {:.1} MiB of KV cache per sequence",
                st.sequences, st.batch_size, st.generated_tokens, st.elapsed_ms / 1e3, st.tokens_per_sec, st.decode_tokens_per_sec,
                st.shared_prefix_tokens, st.kv_bytes_per_sequence as f64 / (1 << 20) as f64
            );
        }
    }

    /// `bench`: median prefill and decode speed and time to first token, optionally with a per-operation profile.
    fn bench(a: BenchArgs) -> R<()> {
        let BenchArgs { m, prompt_file, gen, runs, json, profile } = a;
        let prompt = match prompt_file {
            Some(f) => std::fs::read_to_string(&f)?,
            None => "The history of the city begins".repeat(16),
        };
        let mut engine = load(&m)?;
        let t = bench_runs(&mut engine, &prompt, gen, runs)?;
        let threads = rayon::current_num_threads();
        let v = serde_json::json!({
            "engine": "kvchat-native", "backend": engine.backend(), "adapter": engine.adapter().map(|a| a.name.clone()),
            "prompt_tokens": t.prompt_tokens, "gen_tokens": gen,
            "runs": t.prefill.len(), "threads": threads,
            "prefill_tokens_per_sec": median(t.prefill), "decode_tokens_per_sec": median(t.decode),
            "time_to_first_token_ms": median(t.ttft), "load_ms": engine.load_timings(),
        });
        if profile {
            print_bench_profile(&mut engine, &prompt, gen)?;
        }
        if json {
            println!("{v}");
        } else {
            println!(
                "prompt {} tokens, {gen} generated, median of {} runs: prefill {:.1} tok/s, decode {:.1} tok/s, ttft {:.1} ms",
                t.prompt_tokens, v["runs"], v["prefill_tokens_per_sec"].as_f64().unwrap_or(0.0),
                v["decode_tokens_per_sec"].as_f64().unwrap_or(0.0), v["time_to_first_token_ms"].as_f64().unwrap_or(0.0)
            );
        }
        Ok(())
    }

    /// What each timed bench run measured (the warm-up run is not in them).
    struct BenchTimes {
        prompt_tokens: usize,
        prefill: Vec<f64>,
        decode: Vec<f64>,
        ttft: Vec<f64>,
    }

    /// One warm-up run then `runs` (at least one) timed greedy generations of `gen` tokens from a fresh cache.
    fn bench_runs(engine: &mut Engine, prompt: &str, gen: usize, runs: usize) -> R<BenchTimes> {
        let opts = GenerateOptions { max_tokens: gen, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
        let mut t = BenchTimes { prompt_tokens: 0, prefill: Vec::new(), decode: Vec::new(), ttft: Vec::new() };
        for run in 0..=runs.max(1) {
            engine.reset();
            let g = engine.generate(Prompt::Raw(prompt), &opts, |_| true)?;
            t.prompt_tokens = g.stats.prompt_tokens;
            if run > 0 {
                t.prefill.push(g.stats.prefill_tokens_per_sec);
                t.decode.push(g.stats.decode_tokens_per_sec);
                t.ttft.push(g.stats.time_to_first_token_ms);
            }
        }
        Ok(t)
    }

    /// Per-operation profile: the prompt as one prefill, then `gen` greedy decode steps; one JSON line per phase.
    fn print_bench_profile(engine: &mut Engine, prompt: &str, gen: usize) -> R<()> {
        let ids = engine.tokenize(prompt)?;
        engine.reset();
        engine.set_profiling(true);
        let mut logits = engine.append(&ids)?;
        let pre = engine.profile().cloned().unwrap_or_default();
        engine.set_profiling(true);
        let mut sampling = 0.0;
        for _ in 0..gen {
            let t0 = std::time::Instant::now();
            let tok = kvchat::sampler::argmax(&logits);
            sampling += t0.elapsed().as_secs_f64();
            logits = engine.append(&[tok])?;
        }
        let mut dec = engine.profile().cloned().unwrap_or_default();
        dec.add(kvchat::model::profile::Op::Sampling, sampling);
        for (phase, p) in [("prefill", &pre), ("decode", &dec)] {
            let mut ops = serde_json::Map::new();
            let mut total = 0.0;
            for (name, ms) in p.per_token_ms() {
                total += ms;
                ops.insert(name.into(), serde_json::json!((ms * 1000.0).round() / 1000.0));
            }
            println!("{}", serde_json::json!({"engine": "kvchat-native", "profile": phase, "tokens": p.tokens, "ms_per_token": (total * 1000.0).round() / 1000.0, "ops_ms_per_token": ops}));
        }
        // The decode step against the time to stream its weights once (its memory limit).
        if let Some(r) = dec.plain_read {
            let total: f64 = dec.per_token_ms().iter().map(|(_, ms)| ms).sum();
            let matmuls: f64 = dec.per_token_ms().iter().filter(|(name, _)| name.starts_with("matmul")).map(|(_, ms)| ms).sum();
            let ms = r.secs * 1e3;
            println!(
                "{}",
                serde_json::json!({"engine": "kvchat-native", "plain_read": {"bytes": r.bytes, "ms": (ms * 1000.0).round() / 1000.0, "gb_per_sec": (r.bytes as f64 / r.secs / 1e9 * 100.0).round() / 100.0},
                    "decode_of_limit": (ms / total * 1000.0).round() / 1000.0, "matmuls_of_limit": (ms / matmuls * 1000.0).round() / 1000.0})
            );
        }
        Ok(())
    }
}
