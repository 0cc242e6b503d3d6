#!/usr/bin/env python3
"""llama.cpp natively (llama-cpp-python), one thread, on a GGUF: the bench prompt's prefill and
N greedy tokens decoded one at a time; the medians of RUNS runs, one JSON line, in `kvchat bench
--json`'s keys. The reference for "native decode against llama.cpp's on the same file".
Usage: bench-llamacpp.py MODEL PROMPT_FILE [N=128] [RUNS=3]. Needs `pip install llama-cpp-python`
(it builds llama.cpp, ~10 minutes on 2 cores); says SKIPPED where it is missing."""
import json, statistics, sys, time

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError:
    print("bench-llamacpp: SKIPPED, llama-cpp-python is not installed (pip install llama-cpp-python)")
    sys.exit(0)

model, prompt_file = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 128
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
llm = Llama(model, n_ctx=2048, n_batch=512, n_threads=1, n_threads_batch=1, verbose=False)
ids = llm.tokenize(open(prompt_file, encoding="utf-8").read().encode(), add_bos=True)
prefill, decode = [], []
for r in range(runs + 1):  # the first run warms up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    for _ in range(n):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([tok])
    t2 = time.perf_counter()
    if r:
        prefill.append(len(ids) / (t1 - t0))
        decode.append(n / (t2 - t1))
print(json.dumps({"engine": "llama.cpp-native", "llama_cpp_python": llama_cpp.__version__, "model": model.split("/")[-1], "threads": 1,
                  "prompt_tokens": len(ids), "gen_tokens": n, "runs": runs,
                  "prefill_tokens_per_sec": statistics.median(prefill), "decode_tokens_per_sec": statistics.median(decode)}))
