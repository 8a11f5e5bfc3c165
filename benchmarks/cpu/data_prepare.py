"""Time and peak memory of ``kitrec-fast data prepare`` on synthetic DualFT rows, each in a fresh process.

    python benchmarks/cpu/data_prepare.py --rows 12000 48000 --out /tmp/kitrec-bench-data   # scratch folder
    python benchmarks/cpu/data_prepare.py --rows 12000 48000 --out benchmarks/results/cpu

For each ``--rows`` value, child processes, so nothing one leaves behind shows in another's numbers:
  1. ``kitrec-fast data synth`` writes the rows (not timed; the same seed, so the smaller sets are
     the first rows of the larger ones);
  2. ``kitrec-fast data prepare`` on them: wall time and peak RSS (``ru_maxrss`` of the child,
     the number ``/usr/bin/time -v`` prints as "Maximum resident set size"; it counts the pages of
     memory-mapped files the process has read, too);
  3. for the first ``--rows`` value only, the one-pass reference: the same raw rows rendered with the
     chat template and tokenized whole in one batched call per 1,024 rows by the same fast tokenizer,
     no truncation; its tokenization time is the denominator of ``ratio`` (prepare's own time / one
     plain pass).
Memory must not grow with the rows: the report gives each size's peak against the first size's.
Results name no path of the machine that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_ONE_PASS = r"""
import json, sys, time
from kitrec_fast.data.load import iter_raw
from kitrec_fast.render.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[2])
backend = tok.backend_tokenizer
rows, n = iter_raw(sys.argv[1])
texts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}], tokenize=False) for r in rows]
t = time.perf_counter()
tokens = 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(e.ids) for e in backend.encode_batch(texts[i:i + 1024], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": tokens, "rows": len(texts)}))
"""


# A fresh wrapper whose only child is the measured command: RUSAGE_CHILDREN's ru_maxrss is the
# maximum over all waited children, so measuring from this process would mix the children up.
_MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
            "sys.stderr.write('\\nKITREC_MAXRSS_KB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(p.returncode)")


def _child(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, stdout) of ``cmd`` run in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:5])} ... failed:\n{proc.stderr[-3000:]}")
    kb = int(proc.stderr.rsplit("KITREC_MAXRSS_KB=", 1)[1].split()[0])
    return wall, kb * 1024 / 1e9, proc.stdout


def _measure(rows: int, args: argparse.Namespace, env: dict, tmp: Path, one_pass: bool) -> dict:
    py = sys.executable
    data = tmp / f"rows-{rows}.jsonl"
    _child([py, "-m", "kitrec_fast", "data", "synth", "--rows", str(rows), "--kind", "dualft",
            "--domain", "music", "--seed", str(args.seed), "--output", str(data)], env)
    prepared = tmp / f"prepared-{rows}"
    wall, rss, _ = _child([py, "-m", "kitrec_fast", "data", "prepare", "--dataset", str(data), "--tokenizer",
                           args.tokenizer, "--output", str(prepared)], env)
    report = json.loads((prepared / "report.json").read_text())
    result = {
        "rows": rows, "prepare_wall_s": round(wall, 1), "prepare_peak_rss_gb": round(rss, 2),
        "prepare_seconds_in_process": report.get("seconds"),
        "chunks_tokenized": report["tokenization"].get("chunks_tokenized"),
        "rows_out": {k: report["rows"][k]["out"] for k in ("train", "validation")},
    }
    if one_pass:
        _, _, stdout = _child([py, "-c", _ONE_PASS, str(data), args.tokenizer], env)
        one = json.loads(stdout.strip().splitlines()[-1])
        result.update(one_pass_tokenize_s=round(one["seconds"], 1), one_pass_tokens=one["tokens"],
                      # prepare's own time (no interpreter start or tokenizer load) against the plain pass alone
                      ratio_prepare_to_one_pass=round(report["seconds"]["total"] / one["seconds"], 2))
    data.unlink()
    shutil.rmtree(prepared)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[12000], help="one or more dataset sizes")
    ap.add_argument("--tokenizer", default="offline:qwen3")
    ap.add_argument("--out", required=True, help="folder for data_prepare.json / .md (use a scratch folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-pass", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the one-pass tokenizer reference on the first size")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="kitrec-bench-data-") as tmp:
        runs = [_measure(n, args, env, Path(tmp), one_pass=args.one_pass and k == 0) for k, n in enumerate(args.rows)]
    base = runs[0]
    for r in runs:
        r["peak_rss_vs_first"] = round(r["prepare_peak_rss_gb"] / base["prepare_peak_rss_gb"], 2)
        r["seconds_per_1000_rows"] = round(1000 * r["prepare_seconds_in_process"]["total"] / r["rows"], 2)
    result = {"tokenizer": args.tokenizer, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}}
    (out / "data_prepare.json").write_text(json.dumps(result, indent=2) + "\n")
    sizes = " ".join(str(n) for n in args.rows)
    md = [f"# data prepare: synthetic DualFT-Music rows ({args.tokenizer})", "",
          "| rows | wall time (fresh process) | prepare() itself | per 1,000 rows | peak RSS | peak vs "
          f"{base['rows']:,} rows | chunks tokenized | rows out (train / validation) |",
          "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        md.append(f"| {r['rows']:,} | {r['prepare_wall_s']} s | {r['prepare_seconds_in_process']['total']} s | "
                  f"{r['seconds_per_1000_rows']} s | {r['prepare_peak_rss_gb']} GB | {r['peak_rss_vs_first']}x | "
                  f"{r['chunks_tokenized']:,} | {r['rows_out']['train']} / {r['rows_out']['validation']} |")
    if "one_pass_tokenize_s" in base:
        md += ["", f"One plain batched tokenizer pass over the {base['rows']:,} untruncated rows: "
               f"{base['one_pass_tokenize_s']} s; prepare / one pass: {base['ratio_prepare_to_one_pass']}."]
    md += ["", f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}. "
           f"Command: `python benchmarks/cpu/data_prepare.py --rows {sizes} --out DIR`."]
    (out / "data_prepare.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
