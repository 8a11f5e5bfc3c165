"""Loss parity of the two backends from one saved initial adapter (GPU check; CPU analogue with the tiny model).

    python benchmarks/parity.py run --model DIR_OR_TESTKIT --out DIR [--steps 3] [--seq-len 1024]

1. ``make-adapter`` (own process, never imports unsloth): a LoRA adapter for the model's geometry
   with seeded random A and B (B != 0, so the adapter changes the outputs from the first step),
   saved once. The model is built on the meta device: no weights are read.
2. One worker per backend (``worker.py``, own process each) trains the same rows in the same order
   with the same seed, NEFTune off and LoRA dropout 0, after loading that adapter over its own.
3. The per-step losses are compared: ``parity.json``.

Tolerance (``--rtol``, default 1e-2 relative per step): both backends quantize the same bf16
weights with the same nf4 + double-quant code, so the frozen weights agree exactly; what differs is
arithmetic. Unsloth keeps the residual stream and its fused LoRA/attention kernels in bf16, the
baseline runs its matmuls under bf16 autocast but keeps an fp32 residual stream and fp32 norms
(``prepare_model_for_kbit_training``), and the LM head multiplies in bf16 (Unsloth) vs fp32 (the
baseline's upcast head). bf16 has a relative precision of 2^-8 (0.4 %); the loss averages those
per-token errors over ~1,000 trained tokens, and a few optimizer steps at the recipe's learning rate
move the weights far less than that. A gap above 1 % therefore means a real difference (other data,
other weights, another objective), not rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "worker.py"
BACKENDS = ("unsloth", "peft")


def make_adapter(model: str, out: Path, recipe: str, seed: int, b_std: float = 0.01) -> Path:
    """Seeded random LoRA weights for ``model``'s geometry and the recipe's LoRA settings."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.config import config_from_dict
    from kitrec_fast.recipes import load_recipe

    lora = config_from_dict(load_recipe(recipe)).lora
    config = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(skeleton, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in sorted(get_peft_model_state_dict(peft_model).items()):
        if "lora_A" in name:  # peft's default A init scale (kaiming-uniform bound ~ 1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(meta.shape[1])
            state[name] = (torch.rand(meta.shape, generator=g) * 2 - 1) * bound
        else:
            state[name] = torch.randn(meta.shape, generator=g) * b_std
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    (out / "adapter_meta.json").write_text(json.dumps({"model": model, "recipe": recipe, "seed": seed,
                                                       "b_std": b_std, "tensors": len(state)}, indent=1) + "\n")
    return out


def compare(rows: dict[str, dict], rtol: float) -> dict:
    """Per-step relative loss gaps between the backends; ``ok`` when every step is within ``rtol``."""
    bad = {b: r.get("error") or r.get("status") for b, r in rows.items() if r.get("status") != "ok"}
    if bad:
        return {"ok": False, "error": f"a backend did not finish: {bad}", "rtol": rtol}
    lu, lp = rows["unsloth"]["losses"], rows["peft"]["losses"]
    same_batches = rows["unsloth"]["data"]["batch_sha1"] == rows["peft"]["data"]["batch_sha1"]
    if len(lu) != len(lp) or not lu:
        return {"ok": False, "error": f"step counts differ: {len(lu)} vs {len(lp)}", "rtol": rtol}
    gaps = [abs(a - b) / abs(b) if b else float("inf") for a, b in zip(lu, lp)]
    finite = all(math.isfinite(x) for x in lu + lp)
    return {"ok": bool(finite and same_batches and max(gaps) <= rtol), "rtol": rtol, "max_rel_gap": max(gaps),
            "rel_gaps": gaps, "losses": {"unsloth": lu, "peft": lp}, "identical_batches": same_batches,
            "finite": finite,
            "settings": {b: {k: rows[b]["settings"].get(k) for k in
                             ("attn_implementation", "activation_dtype", "final_hidden_dtype", "lm_head_dtype",
                              "autocast", "fused_lora_kernels", "compile", "init_adapter")} for b in rows}}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    adapter = out / "init_adapter"
    log = out / "make_adapter.log"
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "make-adapter", "--model", args.model,
                             "--out", str(adapter), "--recipe", args.recipe, "--seed", str(args.seed)],
                            stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if rc != 0:
        result = {"ok": False, "error": f"make-adapter exited {rc} (see make_adapter.log)"}
        (out / "parity.json").write_text(json.dumps(result, indent=1) + "\n")
        return 1
    overrides = {"lora.dropout": "0", "train.neftune_alpha": "null", "train.warmup_ratio": "0"}
    # The smoke configuration's tokenizer goes with the tiny model; a model directory brings its own.
    if args.model.startswith("testkit:"):
        overrides["data.tokenizer"] = "offline:qwen3"

    def one(backend: str) -> dict:
        spec = {"name": f"parity-{backend}", "backend": backend, "model": args.model, "kind": "throughput",
                "recipe": args.recipe, "batch_size": args.batch_size, "max_seq_length": args.seq_len,
                "warmup_steps": 0, "timed_steps": args.steps, "seed": args.seed, "init_adapter": str(adapter),
                "data": {"mode": "fixed", "seq_len": args.seq_len, "trained_fraction": args.trained_fraction},
                "overrides": overrides}
        spec_path, row_path = out / f"spec-{backend}.json", out / f"row-{backend}.json"
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        with open(out / f"{backend}.log", "w") as f:
            proc = subprocess.run([sys.executable, str(WORKER), "--spec", str(spec_path), "--out", str(row_path)],
                                  stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if row_path.is_file():
            return json.loads(row_path.read_text())
        return {"status": "error", "error": f"worker exited {proc.returncode} without a row"}

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = dict(zip(BACKENDS, pool.map(one, BACKENDS)))
    result = {**compare(rows, args.rtol), "model": args.model, "steps": args.steps, "seq_len": args.seq_len,
              "batch_size": args.batch_size, "seed": args.seed, "wall_s": time.perf_counter() - t0}
    (out / "parity.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result.get(k) for k in ("ok", "max_rel_gap", "rtol", "error")}))
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-adapter")
    mk.add_argument("--model", required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--recipe", default="dualft_music_seta")
    mk.add_argument("--seed", type=int, default=42)
    rn = sub.add_parser("run")
    rn.add_argument("--model", required=True, help="a model directory or testkit:tiny-qwen3")
    rn.add_argument("--out", required=True)
    rn.add_argument("--recipe", default="dualft_music_seta")
    rn.add_argument("--seed", type=int, default=42)
    rn.add_argument("--steps", type=int, default=3)
    rn.add_argument("--seq-len", type=int, default=1024)
    rn.add_argument("--batch-size", type=int, default=2)
    rn.add_argument("--trained-fraction", type=float, default=0.12)
    rn.add_argument("--rtol", type=float, default=1e-2)
    rn.add_argument("--jobs", type=int, default=1, help="backends in parallel (CPU only; one GPU runs them in turn)")
    args = ap.parse_args(argv)
    if args.cmd == "make-adapter":
        make_adapter(args.model, Path(args.out), args.recipe, args.seed)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
