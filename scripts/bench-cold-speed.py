#!/usr/bin/env python3
"""What the cold KV tier costs (issue 17's time targets), natively with the release CLI, one
thread, greedy, on the pass-key text of scripts/bench-passkey.py (the key at 50%):

* decode tokens/s at ~3.7k tokens of context, window 512 against window 512 + cold tier
  (`kvchat bench --gen 192 --runs 1`: 64 tokens, a third of a second, let one burst of a noisy
  machine decide a round), in back-to-back rounds;
* prefill + an 8-token answer at ~7.3k tokens (`kvchat generate --max-tokens 8`, wall time):
  window 512, window 512 + cold tier, in the same rounds, and the full cache once;
* with `--same-keys`, a third setting in each round: a plain window of 1,028 tokens, which attends
  over as many keys per step as window 512 + recall 512 do (516 + 512): the cold tier's floor, as
  its attention over the recalled keys is the same arithmetic as over the window's.

Prints one JSON line per measurement, then the medians and the ratios, cold / plain for both
(decode tokens/s and seconds), and each round's own decode ratio (`decode_cold_over_plain_by_round`:
the spread a single run hides): the targets are decode >= 0.8x and prefill + answer <= 1.5x the
plain window's, and <= 1/3 of the full cache's time.

With `--cold4`, the cold tier at 4 bits too (`--kv-cold-bits 4`).

  scripts/bench-cold-speed.py MODEL [--rounds 3] [--cli target/release/kvchat] [--no-full] [--same-keys] [--cold4]
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("passkey", os.path.join(here, "bench-passkey.py"))
passkey = importlib.util.module_from_spec(spec)
spec.loader.exec_module(passkey)

KEY = 58213
PLAIN = ["--kv-window", "512"]
COLD = ["--kv-window", "512", "--kv-cold", "16384", "--kv-recall", "512"]
FULL = ["--kv-window", "16384"]
SAME_KEYS = ["--kv-window", "1028"]
COLD4 = COLD + ["--kv-cold-bits", "4"]


def write_prompt(tokens):
    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    f.write(passkey.prompt(tokens, 0.5, KEY))
    f.close()
    return f.name


def decode_rate(cli, model, path, args):
    out = subprocess.run([cli, "bench", "--model", model, "--prompt-file", path, "--gen", "192", "--runs", "1", "--json", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["decode_tokens_per_sec"]


def answer_time(cli, model, path, args):
    t = time.time()
    out = subprocess.run([cli, "generate", "--model", model, "--prompt-file", path, "--max-tokens", "8", "--temperature", "0", "--json", *args],
                         check=True, capture_output=True, text=True).stdout
    return time.time() - t, str(KEY) in json.loads(out)["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cli", default="target/release/kvchat")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-full", action="store_true", help="skip the full cache (about a minute at 7.3k tokens)")
    ap.add_argument("--same-keys", action="store_true", help="add a plain window of 1,028 tokens (the keys the cold tier attends)")
    ap.add_argument("--cold4", action="store_true", help="add the cold tier at 4 bits")
    a = ap.parse_args()
    short, long = write_prompt(3737), write_prompt(7337)
    try:
        settings = [("plain", PLAIN), ("cold", COLD)] + ([("same_keys", SAME_KEYS)] if a.same_keys else []) + ([("cold4", COLD4)] if a.cold4 else [])
        rows = {f"{part}_{name}": [] for part in ("decode", "answer") for name, _ in settings}
        for r in range(a.rounds):
            for name, args in settings:
                rate = decode_rate(a.cli, a.model, short, args)
                secs, right = answer_time(a.cli, a.model, long, args)
                rows[f"decode_{name}"].append(rate)
                rows[f"answer_{name}"].append(secs)
                print(json.dumps({"round": r, "setting": name, "decode_tok_s_at_3_7k": round(rate, 1), "answer_s_at_7_3k": round(secs, 2), "answers_the_key": right}), flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        summary = {
            "decode_cold_over_plain": round(med["decode_cold"] / med["decode_plain"], 3),
            "answer_cold_over_plain": round(med["answer_cold"] / med["answer_plain"], 3),
            "medians": {k: round(v, 2) for k, v in med.items()},
            "decode_cold_over_plain_by_round": [round(c / p, 3) for c, p in zip(rows["decode_cold"], rows["decode_plain"])],
        }
        if a.cold4:
            summary["decode_cold4_over_plain"] = round(med["decode_cold4"] / med["decode_plain"], 3)
            summary["answer_cold4_over_plain"] = round(med["answer_cold4"] / med["answer_plain"], 3)
        if a.same_keys:
            summary["decode_same_keys_over_plain"] = round(med["decode_same_keys"] / med["decode_plain"], 3)
            summary["answer_same_keys_over_plain"] = round(med["answer_same_keys"] / med["answer_plain"], 3)
        if not a.no_full:
            secs, right = answer_time(a.cli, a.model, long, FULL)
            summary["answer_full_s"] = round(secs, 2)
            summary["full_answers_the_key"] = right
            summary["answer_cold_over_full"] = round(med["answer_cold"] / secs, 3)
            summary["answer_plain_over_full"] = round(med["answer_plain"] / secs, 3)
        print(json.dumps(summary), flush=True)
    finally:
        os.unlink(short)
        os.unlink(long)


if __name__ == "__main__":
    sys.exit(main())
