#!/usr/bin/env bash
# Runs the libFuzzer targets (cargo fuzz, nightly) for SECONDS each (default 600; all three
# targets unless some are named: scripts/fuzz.sh 600 tokenize),
# starting from tests/fuzz_corpus/, and prints the executions each made.
# Crashes land in fuzz/artifacts/<target>/; minimized ones belong in tests/fuzz_corpus/<target>/ (replayed by tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
TARGETS=${*:-gguf_load tokenizer_build tokenize}
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t"
  cargo +nightly fuzz run --release "$t" "fuzz/corpus/$t" "tests/fuzz_corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=262144 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss|Done|SUMMARY|panicked|ERROR" | sed "s/^/$t: /"
done
