//! The engine end to end on the tiny model (every supported weight type):
//! tokenizer, chat template, sampler, streaming, stop conditions, errors.

mod common;
use common::*;
use kvchat::tokenizer::StreamDecoder;
use kvchat::{Engine, EngineOptions, Error, GenerateOptions, Message, Prompt, SamplerConfig, StopReason};

fn quantized() -> Engine {
    // Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, F16 and F32 weights, tied output.
    Engine::load(&kvchat::testing::tiny_llama_gguf(7), EngineOptions::default()).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() }
}

#[test]
fn loads_every_weight_type_and_reads_the_hyper_parameters() {
    let e = quantized();
    let c = e.config().clone();
    assert_eq!((c.n_layer, c.n_head, c.n_head_kv, c.n_embd, c.n_ff), (2, 4, 2, 64, 256));
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.rope_base().unwrap(), 10000.0);
    assert_eq!(c.vocab_size, e.tokenizer().vocab_size());
    let mut e = e;
    let l = e.logits(&[5, 6, 7]).unwrap();
    assert_eq!(l.len(), c.vocab_size);
    assert!(l.iter().all(|x| x.is_finite()));
}

#[test]
fn untied_output_weight_is_used_when_present() {
    let mut g = kvchat::testing::TinyGguf::new_f32(7);
    let mut tied = Engine::load(&g.to_bytes(), EngineOptions::default()).unwrap();
    let emb = g.tensors.iter().find(|(n, _)| n == "token_embd.weight").unwrap().1.dequantize(&candle_core::Device::Cpu).unwrap();
    let out = candle_core::quantized::QTensor::quantize(&(emb * 0.5).unwrap(), candle_core::quantized::GgmlDType::F32).unwrap();
    g.tensors.push(("output.weight".into(), out));
    let mut untied = Engine::load(&g.to_bytes(), EngineOptions::default()).unwrap();
    let a = tied.logits(&[10, 11]).unwrap();
    let b = untied.logits(&[10, 11]).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x * 0.5 - y).abs() < 1e-4);
    }
}

#[test]
fn control_tokens_are_single_ids_and_bos_follows_the_file() {
    let e = quantized();
    let ids = e.tokenize("<|im_start|>user\nthe<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert!(!ids[1..ids.len() - 1].contains(&1));
    // add_bos_token is false in the tiny model: nothing is prepended.
    assert_eq!(e.tokenize("the").unwrap()[0], e.tokenize("the").unwrap()[0]);
    assert_ne!(e.tokenize("the").unwrap()[0], 1);
    // Merges apply: " the" is one token.
    assert_eq!(e.tokenize(" the").unwrap().len(), 1);
    // Digits are split one by one (smollm pre-tokenizer).
    assert_eq!(e.tokenize("2024").unwrap().len(), 4);
    assert!(e.tokenizer().is_eog(2));
    assert!(e.tokenizer().is_eog(0));
    assert!(!e.tokenizer().is_eog(1));
}

#[test]
fn decode_round_trips_and_streams_split_utf8_characters() {
    let e = quantized();
    let text = "héllo wörld 😀 naïve";
    let ids = e.tokenize(text).unwrap();
    assert_eq!(e.detokenize(&ids), text);
    // "😀" is four byte tokens here: nothing is released until the character is complete.
    let mut d = StreamDecoder::new();
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(d.push(e.tokenizer(), id));
    }
    pieces.push(d.finish());
    assert!(pieces.iter().all(|p| std::str::from_utf8(p.as_bytes()).is_ok()));
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().any(|p| p.is_empty()), "partial characters are held back");
}

#[test]
fn chatml_template_renders_exactly() {
    let e = quantized();
    let s = e.render_chat(&[Message::new("user", "Hi")]).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let s = e.render_chat(&[Message::new("system", "Be brief."), Message::new("user", "Hi"), Message::new("assistant", "Hello!"), Message::new("user", "Bye")]).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(matches!(e.render_chat(&[Message::new("robot", "x")]), Err(Error::InvalidPrompt(_))));
    assert!(matches!(e.render_chat(&[]), Err(Error::InvalidPrompt(_))));
}

#[test]
fn broken_or_missing_chat_templates_fail_clearly() {
    let mut g = kvchat::testing::TinyGguf::new(7);
    // Any template that renders is taken, whatever its family.
    g.set("tokenizer.chat_template", candle_core::quantized::gguf_file::Value::String("{{ messages[0].content }} [INST]".into()));
    let e = Engine::load(&g.to_bytes(), EngineOptions::default()).unwrap();
    assert_eq!(e.render_chat(&[Message::new("user", "hi")]).unwrap(), "hi [INST]");
    // One that does not parse, or never stops, is refused at load.
    for bad in ["{% if %}", "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"] {
        g.set("tokenizer.chat_template", candle_core::quantized::gguf_file::Value::String(bad.into()));
        let err = Engine::load(&g.to_bytes(), EngineOptions::default()).unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err}");
    }
    g.remove("tokenizer.chat_template");
    let mut e = Engine::load(&g.to_bytes(), EngineOptions::default()).unwrap();
    assert!(!e.has_chat_template());
    let err = e.generate(Prompt::Chat(&[Message::new("user", "hi")]), &greedy(2), |_| true).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
    // Raw prompts still work.
    assert!(e.generate(Prompt::Raw("the"), &greedy(2), |_| true).is_ok());
}

#[test]
fn streamed_pieces_add_up_to_the_text() {
    let mut e = quantized();
    let mut streamed = String::new();
    let g = e.generate(Prompt::Chat(&[Message::new("user", "say the")]), &greedy(30), |p| {
        streamed.push_str(p);
        true
    }).unwrap();
    assert_eq!(streamed, g.text);
    assert_eq!(g.generated_ids.len(), 30);
    assert_eq!(g.stop_reason, Some(StopReason::Length));
    assert!(g.stats.time_to_first_token_ms > 0.0);
    assert_eq!(g.stats.prompt_tokens, g.prompt_ids.len());
}

#[test]
fn greedy_is_deterministic_and_seeds_reproduce_samples() {
    let g1 = quantized().generate(Prompt::Raw("the cat"), &greedy(20), |_| true).unwrap();
    let g2 = quantized().generate(Prompt::Raw("the cat"), &greedy(20), |_| true).unwrap();
    assert_eq!(g1.generated_ids, g2.generated_ids);
    let sample = |seed| {
        let o = GenerateOptions {
            max_tokens: 20,
            sampler: SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, seed: Some(seed), ..Default::default() },
            ignore_eos: true,
            ..Default::default()
        };
        quantized().generate(Prompt::Raw("the cat"), &o, |_| true).unwrap().generated_ids
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

#[test]
fn sampler_filters() {
    use kvchat::sampler::Sampler;
    let logits = vec![1.0f32, 5.0, 3.0, 4.9, -2.0];
    // top-k 1 is greedy whatever the temperature.
    let mut s = Sampler::new(SamplerConfig { temperature: 5.0, top_k: 1, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, seed: Some(3), ..Default::default() }).unwrap();
    for _ in 0..20 {
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
    }
    // min-p 0.5 keeps only tokens within half of the best probability (1 and 3).
    let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, repeat_penalty: 1.0, seed: Some(4), ..Default::default() }).unwrap();
    for _ in 0..50 {
        assert!([1, 3].contains(&s.sample(&mut logits.clone(), &[])));
    }
    // top-p 0.4 keeps the single best token here (p ≈ 0.47).
    let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.4, min_p: 0.0, repeat_penalty: 1.0, seed: Some(5), ..Default::default() }).unwrap();
    for _ in 0..50 {
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
    }
    // The repetition penalty pushes a seen token below its rival.
    let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() }).unwrap();
    assert_eq!(s.sample(&mut logits.clone(), &[1]), 3);
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        assert!(Sampler::new(SamplerConfig { temperature: bad, ..Default::default() }).is_err());
    }
    assert!(Sampler::new(SamplerConfig { top_p: 0.0, ..Default::default() }).is_err());
    assert!(Sampler::new(SamplerConfig { min_p: 1.0, ..Default::default() }).is_err());
}

#[test]
fn stops_at_eos_stop_strings_and_max_tokens() {
    // Find what the model says greedily, then stop on a piece of it.
    let mut e = quantized();
    let full = e.generate(Prompt::Raw("the"), &greedy(40), |_| true).unwrap();
    let text = full.text.clone();
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[cut..].chars().take(3).collect();
    let first = text.find(&stop).unwrap();
    let mut streamed = String::new();
    let g = e
        .generate(Prompt::Raw("the"), &GenerateOptions { stop: vec![stop.clone()], ..greedy(40) }, |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(g.stop_reason, Some(StopReason::StopString));
    assert_eq!(g.text, text[..first]);
    assert_eq!(streamed, g.text, "no part of the stop string is streamed");
    // max_tokens 0: prefill only.
    let g = e.generate(Prompt::Raw("the"), &greedy(0), |_| true).unwrap();
    assert!(g.generated_ids.is_empty());
    // EOS ends the generation unless ignored: force it with a huge logit bias via a prompt of EOS? Use the
    // tokenizer's EOG set instead: generation never emits an EOG id.
    let g = e.generate(Prompt::Raw("the"), &GenerateOptions { ignore_eos: false, ..greedy(60) }, |_| true).unwrap();
    assert!(g.generated_ids.iter().all(|&t| !e.tokenizer().is_eog(t)));
}

#[test]
fn errors_are_typed_and_leave_the_engine_usable() {
    let mut e = quantized();
    let ok = |e: &mut Engine| e.generate(Prompt::Raw("the cat"), &greedy(5), |_| true).unwrap().generated_ids;
    let reference = ok(&mut e);
    assert!(matches!(e.generate(Prompt::Raw(""), &greedy(5), |_| true), Err(Error::InvalidPrompt(_))));
    assert!(matches!(e.generate(Prompt::Ids(&[]), &greedy(5), |_| true), Err(Error::InvalidPrompt(_))));
    assert!(matches!(e.generate(Prompt::Ids(&[999_999]), &greedy(5), |_| true), Err(Error::InvalidPrompt(_))));
    let bad_t = GenerateOptions { sampler: SamplerConfig { temperature: f32::NAN, ..Default::default() }, ..greedy(5) };
    assert!(matches!(e.generate(Prompt::Raw("x"), &bad_t, |_| true), Err(Error::InvalidOption(_))));
    let bad_stop = GenerateOptions { stop: vec![String::new()], ..greedy(5) };
    assert!(matches!(e.generate(Prompt::Raw("x"), &bad_stop, |_| true), Err(Error::InvalidOption(_))));
    // Abort mid-generation.
    let mut n = 0;
    let r = e.generate(Prompt::Raw("the dog"), &greedy(50), |p| {
        if !p.is_empty() {
            n += 1;
        }
        n < 3
    });
    assert!(matches!(r, Err(Error::Aborted)));
    e.reset();
    assert_eq!(ok(&mut e), reference);
    // After an abort without reset the next answer still equals a fresh engine's.
    let _ = e.generate(Prompt::Raw("a b c"), &greedy(50), |_| false);
    assert_eq!(ok(&mut e), reference);
}

#[test]
fn a_prompt_longer_than_the_window_streams_through() {
    let mut e = Engine::load(&kvchat::testing::tiny_llama_gguf(7), opts(32, 4, 16)).unwrap();
    let prompt = "the cat sat on the mat and ".repeat(40);
    let g = e.generate(Prompt::Raw(&prompt), &greedy(10), |_| true).unwrap();
    assert!(g.prompt_ids.len() > 100);
    assert_eq!(g.kv.used, 32);
    assert_eq!(g.kv.evicted, g.prompt_ids.len() + 9 - 32);
}

#[test]
fn bad_window_options_are_rejected() {
    let b = kvchat::testing::tiny_llama_gguf(7);
    for (w, s) in [(4, 4), (3, 8), (0, 0)] {
        let err = Engine::load(&b, opts(w, s, 8)).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)), "{w}/{s}: {err}");
    }
    let mut o = opts(64, 4, 8);
    o.memory_budget = 1 << 10;
    assert!(matches!(Engine::load(&b, o), Err(Error::Memory(_))));
    let mut o = opts(64, 4, 8);
    o.prefill_chunk = 0;
    assert!(matches!(Engine::load(&b, o), Err(Error::InvalidOption(_))));
}

#[test]
fn hostile_prompts() {
    let mut e = Engine::load(&kvchat::testing::tiny_llama_gguf(7), opts(256, 4, 64)).unwrap();
    // 100,000 characters stream through a 256-token window.
    let long: String = "the cat sat. ".chars().cycle().take(100_000).collect();
    let g = e.generate(Prompt::Raw(&long), &greedy(4), |_| true).unwrap();
    assert!(g.prompt_ids.len() > 10_000);
    assert_eq!(g.kv.used, 256);
    // Only special tokens.
    let g = e.generate(Prompt::Raw("<|im_start|><|im_end|><|endoftext|><|im_start|>"), &greedy(4), |_| true).unwrap();
    assert_eq!(g.prompt_ids, vec![1, 2, 0, 1]);
    // Replacement characters (what unpaired UTF-16 surrogates become) and control characters.
    assert!(e.generate(Prompt::Raw("\u{FFFD}\u{0}\u{1b}[31m\r\n"), &greedy(3), |_| true).is_ok());
}

#[test]
fn abort_during_prefill_leaves_a_consistent_cache() {
    let mut e = Engine::load(&kvchat::testing::tiny_llama_gguf(7), opts(512, 4, 16)).unwrap();
    let prompt = "the cat sat on the mat and then ".repeat(12);
    let mut calls = 0;
    let r = e.generate(Prompt::Raw(&prompt), &greedy(10), |_| {
        calls += 1;
        calls < 3 // abort after two prefill chunks
    });
    assert!(matches!(r, Err(Error::Aborted)));
    assert!(e.cached_tokens().len() >= 16, "the chunks computed before the abort stay cached");
    let after = e.generate(Prompt::Raw(&prompt), &greedy(10), |_| true).unwrap();
    let fresh = quantized_opts(512, 4, 16).generate(Prompt::Raw(&prompt), &greedy(10), |_| true).unwrap();
    assert_eq!(after.generated_ids, fresh.generated_ids, "the next answer equals a fresh engine's");
    assert!(after.stats.reused_tokens >= 16);
}

fn quantized_opts(window: usize, sinks: usize, chunk: usize) -> Engine {
    Engine::load(&kvchat::testing::tiny_llama_gguf(7), opts(window, sinks, chunk)).unwrap()
}

#[test]
fn the_next_chat_turn_keeps_the_models_own_tokens_and_tokenizes_only_new_text() {
    let mut e = quantized();
    let mut msgs = vec![Message::new("user", "héllo the cat 123")];
    let mut cached = 0;
    for turn in 0..6 {
        let text = e.render_chat(&msgs).unwrap();
        let g = e.generate(Prompt::Chat(&msgs), &greedy(5), |_| true).unwrap();
        // The prompt is exactly the rendered text, whatever tokens spell it.
        assert_eq!(e.tokenizer().decode_bytes(&g.prompt_ids), text.as_bytes(), "turn {turn}");
        if turn > 0 && turn != 4 {
            // (The random tiny model prints bytes that are not valid UTF-8; the page sends back
            // U+FFFD for them, so the last few cached tokens may not match the new text.)
            assert!(g.stats.reused_tokens + 4 >= cached, "turn {turn}: {} of {cached} cached tokens reused", g.stats.reused_tokens);
        }
        cached = e.cached_tokens().len();
        msgs.push(Message::new("assistant", g.text));
        msgs.push(Message::new("user", format!("and then {turn} 😀 the")));
        if turn == 3 {
            // An edited earlier message falls back to token-level matching.
            msgs[0].content = "edited".into();
        }
    }
    // Incremental tokenization of an edited conversation equals tokenizing the whole text.
    let mut enc = kvchat::tokenizer::IncrementalEncoder::default();
    let a = e.render_chat(&msgs[..3]).unwrap();
    let b = e.render_chat(&msgs).unwrap();
    assert_eq!(enc.encode(e.tokenizer(), &a).unwrap(), e.tokenize(&a).unwrap());
    assert_eq!(enc.encode(e.tokenizer(), &b).unwrap(), e.tokenize(&b).unwrap());
}
