# kvchat — the two commands a user needs are `make serve` and `make test`.
SHELL := /bin/bash
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
# Tests and benchmarks use one thread: candle's pool spins at barriers, and on
# a busy 2-core machine two threads can be much slower than one.
export CANDLE_NUM_THREADS ?= 1

.PHONY: all test test-native model build-native bench ppl clean

all: build-native

model: $(MODEL)
$(MODEL):
	./scripts/fetch-model.sh

build-native:
	cargo build --release

# Everything: native unit and integration tests (tiny model, then the real model).
test: model
	KVCHAT_REQUIRE_MODEL=1 cargo test --release

test-native: test

# Native speed, one thread: the fixed 128-token prompt, 128 greedy tokens, median of 3 runs.
BENCH_PROMPT := $(firstword $(wildcard ../shared/reference/bench-prompt.txt) tests/fixtures/bench-prompt.txt)
bench: model build-native
	./target/release/kvchat bench --model $(MODEL) --prompt-file $(BENCH_PROMPT) --gen 128 --runs 3 --json
	@echo "cache vs --no-cache, 256 generated tokens:"
	@for flag in "" "--no-cache"; do \
	  ./target/release/kvchat generate --model $(MODEL) --prompt "Once upon a time" --max-tokens 256 --ignore-eos --json $$flag \
	  | python3 -c "import json,sys; r=json.load(sys.stdin); print('  $${flag:-cache}:', round(r['decode_tokens_per_sec'],1), 'decode tok/s')"; \
	done

# Perplexity of the GPL-3 text (first 4096 tokens): full cache, and a 512 window with and without sinks.
ppl: model build-native
	@for args in "--kv-window 4096" "--kv-window 512 --kv-sinks 4" "--kv-window 512 --kv-sinks 0"; do \
	  ./target/release/kvchat perplexity --model $(MODEL) --file /usr/share/common-licenses/GPL-3 --max-tokens 4096 $$args --json; \
	done

clean:
	cargo clean
