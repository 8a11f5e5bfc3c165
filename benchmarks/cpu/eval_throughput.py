"""Evaluation throughput: the same rows through ``--engine hf`` and ``--engine vllm``, and the prompt
preparation of ``eval generate`` on a large synthetic test set. Every measurement in a fresh process.

    python benchmarks/cpu/eval_throughput.py --out /tmp/kitrec-bench-eval                 # both parts
    python benchmarks/cpu/eval_throughput.py --part engines --rows 12 --max-new-tokens 32 --out DIR
    python benchmarks/cpu/eval_throughput.py --part prepare --prepare-rows 30000 --out DIR

engines: a smoke adapter (``model.load_in_4bit=false``) on the head_dim-64 tiny Qwen3 (vLLM's CPU
attention has no head_dim-16 kernel), then ``eval generate`` on the first ``--rows`` rows of
``embedded:test_music`` (all 100 candidates) with each engine at its default batch size. Reported:
rows/s, prompt and generated tokens/s over the generation loop (engine start excluded, reported
apart), the vllm/hf ratio, and whether both engines gave the same tokens.

prepare: ``data synth --split test`` rows (100 candidates, ~7k-token prompts), then
``eval generate --prepare-only`` (read, select, normalise, render, tokenize every pending row once
into the prompt store; no model) against one batched tokenizer pass over the same chat-rendered
prompts (``encode_batch`` per 1,024 texts, the same fast tokenizer). ``ratio`` = preparation time /
that pass; the tokenizer is loaded before either clock starts. Peak RSS is the preparation child's
``ru_maxrss``. Results name no path of the machine that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.cpu.data_prepare import _child  # noqa: E402  (fresh process: wall time and peak RSS)

HD64 = "testkit:tiny-qwen3-hd64"

_GENERATE = r"""
import json, sys
from kitrec_fast.eval.generate import GenerateOptions, run_generate
from kitrec_fast.render.tokenizer import load_tokenizer
load_tokenizer("offline:qwen3")  # transformers imported and the tokenizer built before any clock starts
opts = GenerateOptions(**json.loads(sys.argv[1]))
if __name__ == "__main__":
    print("KITREC_SUMMARY=" + json.dumps(run_generate(opts)))
"""

_ONE_PASS = r"""
import itertools, json, sys, time
from kitrec_fast.data.load import iter_raw
from kitrec_fast.render.tokenizer import load_tokenizer
tok = load_tokenizer("offline:qwen3")
backend = tok.backend_tokenizer
rows, n = iter_raw(sys.argv[1], "test")
limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
texts = [tok.apply_chat_template([{"role": "user", "content": r["input"]}], tokenize=False, add_generation_prompt=True)
         for r in itertools.islice(rows, limit)]
t = time.perf_counter()
tokens = 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(e.ids) for e in backend.encode_batch(texts[i:i + 1024], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": tokens, "rows": len(texts)}))
"""


def _summary(stdout: str) -> dict:
    return json.loads(stdout.rsplit("KITREC_SUMMARY=", 1)[1].splitlines()[0])


def _train_adapter(run: Path, env: dict) -> None:
    cmd = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "peft",
           "--output-dir", str(run), f"model.name={HD64}", "model.load_in_4bit=false", "data.limit=8",
           "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3", "train.max_steps=3",
           "train.learning_rate=0.02", "train.warmup_ratio=0", "train.save_steps=3", "train.eval_steps=3",
           "train.gradient_accumulation_steps=1", "lora.r=16", "lora.alpha=32"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training the smoke adapter failed:\n{proc.stderr[-3000:]}")


def engines(args, env: dict, tmp: Path) -> dict:
    run = Path(args.run) if args.run else tmp / "run"
    if not args.run:
        _train_adapter(run, env)
    result: dict = {"rows": args.rows, "max_new_tokens": args.max_new_tokens, "dataset": "embedded:test_music",
                    "model": HD64, "lora_r": 16, "candidates": "all (100)"}
    preds = {}
    for engine in ("hf", "vllm"):
        out = tmp / engine
        opts = {"dataset": "embedded:test_music", "output": str(out), "run_dir": str(run), "engine": engine,
                "limit": args.rows, "max_new_tokens": args.max_new_tokens}
        wall, rss, stdout = _child([sys.executable, "-c", _GENERATE, json.dumps(opts)], env)
        summary = _summary(stdout)
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        config = json.loads((out / "generate_config.json").read_text())
        seconds = summary["seconds"]
        prompt = sum(r["prompt_tokens"] for r in records)
        generated = sum(r["new_tokens"] for r in records)
        preds[engine] = {r["row_id"]: r["raw_text"] for r in records}
        result[engine] = {
            "batch_size": config["batch_size"], "engine": config["engine"], "generate_s": seconds,
            "process_wall_s": round(wall, 1), "peak_rss_gb": round(rss, 2),
            "rows_per_s": round(len(records) / seconds, 3), "prompt_tokens": prompt, "generated_tokens": generated,
            "prompt_tokens_per_s": round(prompt / seconds, 1), "generated_tokens_per_s": round(generated / seconds, 2),
        }
    result["ratio_vllm_to_hf"] = {k: round(result["vllm"][k] / result["hf"][k], 2)
                                  for k in ("rows_per_s", "prompt_tokens_per_s", "generated_tokens_per_s")}
    result["same_tokens"] = preds["hf"] == preds["vllm"]
    return result


def prepare(args, env: dict, tmp: Path) -> dict:
    rows = tmp / "test.jsonl"
    _child([sys.executable, "-m", "kitrec_fast", "data", "synth", "--rows", str(args.prepare_rows), "--split", "test",
            "--kind", "dualft", "--domain", "music", "--seed", "0", "--output", str(rows)], env)
    opts = {"dataset": str(rows), "output": str(tmp / "prep"), "model": "testkit:tiny-qwen3",
            "tokenizer": "offline:qwen3", "engine": "hf", "prepare_only": True}
    wall, rss, stdout = _child([sys.executable, "-c", _GENERATE, json.dumps(opts)], env)
    summary = _summary(stdout)
    sample = min(args.one_pass_rows or args.prepare_rows, args.prepare_rows)
    _, one_rss, one_out = _child([sys.executable, "-c", _ONE_PASS, str(rows), str(sample)], env)
    one = json.loads(one_out.strip().splitlines()[-1])
    if sample == args.prepare_rows:
        assert one["tokens"] == summary["prompt_tokens"], (one["tokens"], summary["prompt_tokens"])
    # A sampled pass is scaled by tokens (the tokenizer's time is linear in them, not in rows).
    one_pass_s = one["seconds"] * summary["prompt_tokens"] / one["tokens"]
    return {
        "rows": args.prepare_rows, "prompt_tokens": summary["prompt_tokens"],
        "mean_prompt_tokens": round(summary["prompt_tokens"] / args.prepare_rows),
        "prepare_s": summary["prepare_seconds"], "build_s": summary["build_seconds"],
        "one_pass_rows": sample, "one_pass_sample_s": round(one["seconds"], 1),
        "one_pass_tokenize_s": round(one_pass_s, 1),
        "ratio_prepare_to_one_pass": round(summary["prepare_seconds"] / one_pass_s, 2),
        "peak_rss_gb": round(rss, 2), "process_wall_s": round(wall, 1), "one_pass_peak_rss_gb": round(one_rss, 2),
    }


def _markdown(result: dict) -> str:
    md = ["# eval throughput (CPU)", ""]
    if "engines" in result:
        e = result["engines"]
        md += [f"`eval generate` on {e['rows']} rows of {e['dataset']} ({e['candidates']} candidates), "
               f"{e['max_new_tokens']} new tokens, {e['model']} + a LoRA r={e['lora_r']} smoke adapter, fp32:", "",
               "| engine | batch | engine start | generate | rows/s | prompt tok/s | generated tok/s | peak RSS |",
               "|---|---|---|---|---|---|---|---|"]
        for name in ("hf", "vllm"):
            x = e[name]
            md.append(f"| {name} | {x['batch_size']} | {x['engine']['load_seconds']} s | {x['generate_s']} s | "
                      f"{x['rows_per_s']} | {x['prompt_tokens_per_s']} | {x['generated_tokens_per_s']} | "
                      f"{x['peak_rss_gb']} GB |")
        r = e["ratio_vllm_to_hf"]
        md += ["", f"vllm / hf: rows/s x{r['rows_per_s']}, prompt tok/s x{r['prompt_tokens_per_s']}, "
               f"generated tok/s x{r['generated_tokens_per_s']}; same tokens from both engines: {e['same_tokens']}."]
        md += [f"Source: {e['source']}.", ""] if "source" in e else [""]
    if "prepare" in result:
        p = result["prepare"]
        md += [f"Prompt preparation of `eval generate` (`--prepare-only`) on {p['rows']:,} synthetic test rows "
               f"(100 candidates, mean {p['mean_prompt_tokens']} prompt tokens):", "",
               "| measure | value |", "|---|---|",
               f"| preparation (read, select, build once into the prompt store) | {p['prepare_s']} s |",
               f"| one batched tokenizer pass over the same prompts | {p['one_pass_tokenize_s']} s"
               + (f" (measured on the first {p['one_pass_rows']:,} rows: {p['one_pass_sample_s']} s, scaled by "
                  f"prompt tokens)" if p.get("one_pass_rows", p["rows"]) < p["rows"] else "") + " |",
               f"| ratio | {p['ratio_prepare_to_one_pass']} |",
               f"| peak RSS of the preparing process | {p['peak_rss_gb']} GB |", ""]
    m = result["machine"]
    md.append(f"Machine: {m['cpus']} CPUs (shared with other jobs: times are noisy), Python {m['python']}. Commands: "
              + "; ".join(f"`{result[k]['command']}`" for k in ("engines", "prepare") if k in result) + ".")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("engines", "prepare", "both"), default="both")
    ap.add_argument("--rows", type=int, default=12, help="engines: test rows through each engine")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--run", help="engines: an existing run directory on the head_dim-64 base (default: train one)")
    ap.add_argument("--prepare-rows", type=int, default=30000, help="prepare: synthetic test rows")
    ap.add_argument("--one-pass-rows", type=int, default=None,
                    help="prepare: measure the reference tokenizer pass on the first N rows and scale it by prompt "
                         "tokens (default: all rows)")
    ap.add_argument("--out", required=True, help="folder for eval_throughput.json / .md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    # One part at a time keeps the other part's earlier result in the same files.
    old = out / "eval_throughput.json"
    result: dict = json.loads(old.read_text()) if old.is_file() else {}
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}
    with tempfile.TemporaryDirectory(prefix="kitrec-bench-eval-") as tmp:
        for part, measure, flags in (("engines", engines, f"--rows {args.rows} --max-new-tokens {args.max_new_tokens}"),
                                     ("prepare", prepare, f"--prepare-rows {args.prepare_rows}"
                                     + (f" --one-pass-rows {args.one_pass_rows}" if args.one_pass_rows else ""))):
            if args.part in (part, "both"):
                t = time.perf_counter()
                result[part] = measure(args, env, Path(tmp))
                result[part].update(wall_s=round(time.perf_counter() - t, 1),
                                    command=f"python benchmarks/cpu/eval_throughput.py --part {part} {flags} --out DIR")
    (out / "eval_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval_throughput.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
