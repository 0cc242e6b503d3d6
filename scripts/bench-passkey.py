#!/usr/bin/env python3
"""The pass-key table of the cold KV tier (issue 17): prompt length x cache setting ->
answer, time, peak RSS, natively with the release CLI, greedy.

The prompt is Landmark Attention's format: an instruction, filler sentences, the key stated
once at an early, middle or late position, more filler, then "What is the pass key? The pass
key is". Usage:

  scripts/bench-passkey.py MODEL [--lengths 3737,7337,12617] [--keys 3] [--positions 0.1,0.5,0.9]
                           [--settings plain,cold] [--full-up-to 7337]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

INTRO = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
# SmolLM2's tokenizer: about 67 tokens of frame and 24 per filler repetition.
FRAME, PER_FILL = 67, 24
SETTINGS = {
    "plain": ["--kv-window", "512"],
    "cold": ["--kv-window", "512", "--kv-cold", "16384", "--kv-recall", "512"],
    "cold4": ["--kv-window", "512", "--kv-cold", "16384", "--kv-recall", "512", "--kv-cold-bits", "4"],
    "cold-f16": ["--kv-window", "512", "--kv-cold", "16384", "--kv-recall", "512", "--kv-f16"],
    "full": ["--kv-window", "16384"],
}


def prompt(tokens, where, key):
    fill = max(1, (tokens - FRAME) // PER_FILL)
    before = int(fill * where)
    fact = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return INTRO + FILLER * before + fact + FILLER * (fill - before) + "\nWhat is the pass key? The pass key is"


def run(cli, model, text, args):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        t = time.time()
        p = subprocess.Popen([cli, "generate", "--model", model, "--prompt-file", f.name, "--max-tokens", "8", "--json", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
        secs = time.time() - t
        if p.returncode != 0:
            raise RuntimeError(err.decode())
        return json.loads(out), secs
    finally:
        os.unlink(f.name)


def peak_rss_mb(cli, model, text, args):
    """Runs once more under /usr/bin/time for the peak RSS (MB), when it exists."""
    if not os.path.exists("/usr/bin/time"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "%M", cli, "generate", "--model", model, "--prompt-file", f.name, "--max-tokens", "1", *args],
                           capture_output=True, text=True)
        return int(r.stderr.strip().splitlines()[-1]) / 1024
    finally:
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cli", default="target/release/kvchat")
    ap.add_argument("--lengths", default="3737,7337,12617")
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--positions", default="0.1,0.5,0.9")
    ap.add_argument("--settings", default="plain,cold")
    ap.add_argument("--full-up-to", type=int, default=0, help="also the full cache for lengths up to this")
    ap.add_argument("--rss", action="store_true", help="measure peak RSS (one more run per length and setting)")
    a = ap.parse_args()
    rng = random.Random(17)
    keys = [rng.randrange(10000, 99999) for _ in range(a.keys)]
    for n in map(int, a.lengths.split(",")):
        settings = a.settings.split(",") + (["full"] if n <= a.full_up_to else [])
        for s in settings:
            right, times, answers, tokens = 0, [], [], 0
            for where in map(float, a.positions.split(",")):
                for key in keys:
                    r, secs = run(a.cli, a.model, prompt(n, where, key), SETTINGS[s])
                    ok = str(key) in r["text"]
                    right += ok
                    times.append(secs)
                    tokens = len(r["prompt_ids"])
                    answers.append(f"{where}:{key}:{'ok' if ok else repr(r['text'][:24])}")
            rss = peak_rss_mb(a.cli, a.model, prompt(n, 0.5, keys[0]), SETTINGS[s]) if a.rss else None
            times.sort()
            print(json.dumps({"prompt_tokens": tokens, "setting": s, "args": " ".join(SETTINGS[s]), "correct": right, "runs": len(times),
                              "median_s": round(times[len(times) // 2], 1), "peak_rss_mb": rss and round(rss), "answers": answers}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
