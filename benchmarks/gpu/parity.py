"""Backend parity from one saved initial adapter: the first step's LoRA gradients must agree.

    python benchmarks/gpu/parity.py run --model DIR_OR_TESTKIT --out DIR [--steps 3] [--seq-len 1024]

1. ``make-adapter`` (own process, never imports unsloth): a LoRA adapter for the model's geometry
   with seeded random A and B (B != 0, so the adapter changes the outputs and A gets a gradient from
   the first step), saved once. The model is built on the meta device: no weights are read.
2. One worker per backend (``worker.py``, own process each) loads that adapter over its own and
   trains the same rows in the same order with the same seed, NEFTune off and LoRA dropout 0; it
   saves every LoRA weight's gradient of the first step (before clipping).
3. ``parity.json``: per LoRA tensor the cosine and the relative norm gap of the two gradients; the
   verdict is that every tensor is within the tolerances below. The losses are reported beside them.

Why gradients and not losses: with random weights (the architecture-only model) both backends sit
at ~ln V (about 12 nats) whatever the adapter does, so a loss tolerance passes almost any numerics
bug. The first step's gradients are a function of the same weights and the same rows only, and a
bug in the adapter's arithmetic changes them directly.

Tolerances (the same on CPU and GPU). Both backends quantize the same bf16 weights with the same
bitsandbytes nf4 + double-quant code, so the frozen weights are bit-identical; nf4's own error is
shared, not a difference. What differs is arithmetic: Unsloth keeps the residual stream and its
fused LoRA/attention kernels in bf16, the baseline runs its matmuls under bf16 autocast with an fp32
residual stream, fp32 norms and an fp32 LM head (``prepare_model_for_kbit_training``). Each bf16
rounding has a relative error of at most 2^-8 (0.4 %); a gradient element passes through some ten
roundings forward and backward (2 layers), so its difference between the backends is a few 0.1 % to
~2 % of its size, independent from element to element. Two vectors that differ by independent
relative noise e per element have cosine ~ 1 - e^2/2: 0.9998 at e = 2 %, still 0.995 at e = 10 %.
Hence ``COS_MIN = 0.99`` passes bf16 noise with a wide margin, while the bugs it guards against give
much lower values: LoRA dropout p left on in one backend multiplies each input by an independent
0 or 1/(1-p), relative noise sqrt(p/(1-p)), cosine ~ sqrt(1-p) = 0.96 at the recipes' p = 0.08; an
adapter not applied in one layer gives that layer no gradient at all (cosine 0). The norms: bf16
noise averages out over the ~10^5 elements of a tensor, systematic rounding (a bf16 vs fp32 head)
moves a norm by well under 1 %; ``REL_NORM_MAX = 0.05``. A wrong LoRA scaling (alpha/r vs alpha,
alpha/sqrt(r), 1/r) changes the gradients' norms by a factor of 2 or more. tests/test_parity.py
plants each of these bugs on CPU and checks that these very tolerances fail them.
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
REPO = HERE.parents[1]
WORKER = REPO / "benchmarks" / "training" / "worker.py"
BACKENDS = ("unsloth", "peft")
COS_MIN = 0.99
REL_NORM_MAX = 0.05
# Overrides that make the two runs comparable: no random noise in either (NEFTune, LoRA dropout),
# no warm-up of the learning rate (the first steps would differ by nothing but that).
PARITY_OVERRIDES = {"lora.dropout": "0", "train.neftune_alpha": "null", "train.warmup_ratio": "0"}


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


def compare_grads(a: dict, b: dict, cos_min: float = COS_MIN, rel_norm_max: float = REL_NORM_MAX) -> dict:
    """Per LoRA tensor: cosine and |norm_a / norm_b - 1| of two backends' first-step gradients.

    ``ok`` when both hold the same tensors and every one is within the tolerances; a tensor with no
    or a zero gradient on one side fails (cosine 0)."""
    per, failing = {}, []
    for name in sorted(set(a) | set(b)):
        ga, gb = a.get(name), b.get(name)
        if ga is None or gb is None:
            per[name] = {"cosine": 0.0, "rel_norm_gap": float("inf"), "missing": "a" if ga is None else "b"}
        else:
            x, y = ga.double().flatten(), gb.double().flatten()
            na, nb = float(x.norm()), float(y.norm())
            cos = float(x @ y) / (na * nb) if na > 0 and nb > 0 else 0.0
            gap = abs(na / nb - 1) if nb > 0 else float("inf")
            per[name] = {"cosine": cos, "rel_norm_gap": gap, "norm": [na, nb]}
        if not (per[name]["cosine"] >= cos_min and per[name]["rel_norm_gap"] <= rel_norm_max):
            failing.append(name)
    worst_cos = min((v["cosine"] for v in per.values()), default=0.0)
    worst_gap = max((v["rel_norm_gap"] for v in per.values()), default=float("inf"))
    return {"ok": bool(per) and not failing, "cos_min": cos_min, "rel_norm_max": rel_norm_max, "tensors": len(per),
            "worst_cosine": worst_cos, "worst_rel_norm_gap": worst_gap, "failing": failing, "per_tensor": per}


def load_grads(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def compare(rows: dict[str, dict], grads: dict[str, dict] | None, cos_min: float = COS_MIN,
            rel_norm_max: float = REL_NORM_MAX) -> dict:
    """The verdict (first-step gradients, same batches, finite losses) with the losses beside it."""
    bad = {b: r.get("error") or r.get("status") for b, r in rows.items() if r.get("status") != "ok"}
    if bad:
        return {"ok": False, "error": f"a backend did not finish: {bad}"}
    if not grads or set(grads) != set(BACKENDS):
        return {"ok": False, "error": "a backend saved no first-step gradients"}
    lu, lp = rows["unsloth"]["losses"], rows["peft"]["losses"]
    same_batches = rows["unsloth"]["data"]["batch_sha1"] == rows["peft"]["data"]["batch_sha1"]
    finite = all(math.isfinite(x) for x in lu + lp) and bool(lu) and len(lu) == len(lp)
    g = compare_grads(grads["unsloth"], grads["peft"], cos_min, rel_norm_max)
    gaps = [abs(x - y) / abs(y) if y else float("inf") for x, y in zip(lu, lp)]
    result = {"ok": bool(g["ok"] and same_batches and finite), "grads": g, "identical_batches": same_batches,
              "finite": finite, "losses": {"unsloth": lu, "peft": lp}, "rel_loss_gaps": gaps,
              "max_rel_loss_gap": max(gaps) if gaps else None,
              "settings": {b: {k: rows[b]["settings"].get(k) for k in
                               ("attn_implementation", "activation_dtype", "final_hidden_dtype", "lm_head_dtype",
                                "autocast", "fused_lora_kernels", "compile", "init_adapter", "lora_alpha", "lora_r",
                                "lora_dropout")} for b in rows}}
    if not same_batches:
        result["error"] = "the backends trained on different batches"
    elif not finite:
        result["error"] = f"losses not finite or of different lengths: {lu} vs {lp}"
    return result


def parity_spec(backend: str, args, adapter: Path, out: Path, overrides: dict | None = None) -> dict:
    """One backend's worker spec: the same rows, seed and adapter on both; first-step gradients saved."""
    over = dict(PARITY_OVERRIDES)
    # The smoke configuration's tokenizer goes with the tiny model; a model directory brings its own.
    if args.model.startswith("testkit:"):
        over["data.tokenizer"] = "offline:qwen3"
    over.update(overrides or {})
    return {"name": f"parity-{backend}", "backend": backend, "model": args.model, "kind": "throughput",
            "recipe": args.recipe, "batch_size": args.batch_size, "max_seq_length": args.seq_len,
            "warmup_steps": 0, "timed_steps": args.steps, "seed": args.seed, "init_adapter": str(adapter),
            "data": {"mode": "fixed", "seq_len": args.seq_len, "trained_fraction": args.trained_fraction},
            "overrides": over, "save_grads": str(out / f"grads-{backend}.safetensors")}


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

    def one(backend: str) -> dict:
        spec = parity_spec(backend, args, adapter, out)
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
    grads = {b: load_grads(out / f"grads-{b}.safetensors") for b in BACKENDS
             if (out / f"grads-{b}.safetensors").is_file()}
    result = {**compare(rows, grads), "model": args.model, "steps": args.steps, "seq_len": args.seq_len,
              "batch_size": args.batch_size, "seed": args.seed, "wall_s": time.perf_counter() - t0}
    (out / "parity.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    g = result.get("grads") or {}
    print(json.dumps({"ok": result["ok"], "worst_cosine": g.get("worst_cosine"),
                      "worst_rel_norm_gap": g.get("worst_rel_norm_gap"), "max_rel_loss_gap": result.get("max_rel_loss_gap"),
                      "error": result.get("error")}))
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
    rn.add_argument("--jobs", type=int, default=1, help="backends in parallel (CPU only; one GPU runs them in turn)")
    args = ap.parse_args(argv)
    if args.cmd == "make-adapter":
        make_adapter(args.model, Path(args.out), args.recipe, args.seed)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
