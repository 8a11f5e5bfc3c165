"""One benchmark configuration in one fresh process; writes one JSON result row.

    python benchmarks/training/worker.py --spec SPEC.json --out ROW.json     # a throughput or ceiling config
    python benchmarks/training/worker.py --calibrate --out CAL.json           # the card's dense matmul rate

The harness (``benchmarks/training/harness.py``) writes the spec and starts this script once per
configuration, so the two backends never share a process: importing unsloth patches transformers,
trl and peft for the whole process. For the same reason the backend is imported *first*, before
anything else touches transformers.

What runs is the product's own training step: the backend's ``load_model`` (4-bit base + LoRA),
``kitrec_fast.train.trainer.make_trainer`` (TRL SFTTrainer, the project's collator and chunked
loss, the recipe's optimizer), with gradient accumulation 1 so that one optimizer step is one
micro-batch. Only two things are changed on the trainer, both to make the measurement clean:
the sampler is sequential (the harness fixes the data order, so both backends see the very same
batches in the same order; a fingerprint of every batch is recorded to prove it), and checkpoint
saving is switched off.

The row is written as the run goes, after every step (status ``partial``: tokens/s over the timed
steps so far, peak memory, step times, the first step's time, which includes the compile), so a
worker stopped at its time limit still leaves a figure. With ``timed_auto`` in the spec the number of
timed steps is chosen from the last warm-up step's time so that they fill the worker's time limit
(``time_limit_s``, its share of the budget), within [TIMED_MIN, TIMED_MAX].

Memory is measured the same way on both backends: after loading, ``gc.collect()`` and
``torch.cuda.empty_cache()`` before the peak counters are reset (Unsloth empties the cache inside
``get_peft_model``; without this the baseline's reserved peak would carry its load's leftovers), and
again after the first step, so the first step's peak (the fast path's compile) and the steady-state
peak of the steps after it are reported apart (``memory.first_step``, ``memory.steady``;
``memory.training`` is the larger of the two). A parity run (``save_grads`` in the spec)
also saves every LoRA weight's gradient of the first step, taken as backward accumulates it, before
the Trainer clips it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# run as a script (a fresh process per configuration): the checkout's root makes ``benchmarks`` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.training.measure import (StepTimer, apply_mem_cap, calibrate, capture_first_grads,  # noqa: E402
                                         choose_timed_steps, environment, fresh_peak, grad_key, memory_stats,
                                         peak_max, step_stats)
from benchmarks.training.train_rows import (BatchRecorder, build_dataset, load_initial_adapter,  # noqa: E402
                                            sequential_sampler)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCHEMA = "kitrec_fast.bench/v1"


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# the run


def make_run_config(spec: dict[str, Any]):
    """The recipe's RunConfig with the benchmark's fixed settings applied on top."""
    from kitrec_fast.config import apply_overrides, config_from_dict
    from kitrec_fast.recipes import load_recipe

    raw = load_recipe(spec.get("recipe", "dualft_music_seta"))
    steps = int(spec.get("warmup_steps", 0)) + int(spec.get("timed_steps", 1))
    big = 10**9  # eval/save never trigger; logging every step gives the per-step loss (sanity check)
    over = {
        "backend": spec["backend"],
        "model.name": spec["model"],
        "data.max_length": str(max(256, int(spec["max_seq_length"]))),
        "train.per_device_batch_size": str(spec["batch_size"]),
        "train.gradient_accumulation_steps": "1",
        "train.max_steps": str(steps if spec.get("kind", "throughput") == "throughput" else 1),
        "train.eval_steps": str(big), "train.save_steps": str(big), "train.logging_steps": "1",
        "train.early_stopping_patience": "0", "train.group_by_length": "false",
        "train.seed": str(spec.get("seed", 42)),
    }
    over.update({k: str(v) for k, v in (spec.get("overrides") or {}).items()})
    return config_from_dict(apply_overrides(raw, over))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one benchmark configuration (see module docstring)")
    ap.add_argument("--spec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calibrate", action="store_true")
    args = ap.parse_args(argv)

    if args.calibrate:
        _write_json(args.out, calibrate())
        return 0

    spec = json.loads(Path(args.spec).read_text())
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    # unsloth writes generated code; keep it out of the checkout (device README advice)
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(tempfile.gettempdir()) / "unsloth_compiled_cache"))
    row: dict[str, Any] = {"schema": SCHEMA, "name": spec["name"], "kind": spec.get("kind", "throughput"),
                           "backend": spec["backend"], "status": "error", "spec": spec}
    t_start = time.perf_counter()
    try:
        # FIRST: on the fast path unsloth must patch transformers/trl/peft before they are imported.
        from kitrec_fast.backends import get_backend

        backend = get_backend(spec["backend"])
        row["timing_import_s"] = time.perf_counter() - t_start
        import torch

        if spec["backend"] != "unsloth" and "unsloth" in sys.modules:
            raise RuntimeError("unsloth was imported in a baseline process")
        cfg = make_run_config(spec)
        if spec.get("kind", "throughput") == "ceiling":
            _run_ceiling(spec, cfg, backend, torch, row, args.out)
        else:
            _run_throughput(spec, cfg, backend, torch, row, args.out, t_start)
    except BaseException as exc:  # noqa: BLE001 - every failure must still produce a row
        row["status"] = "oom" if _is_oom(exc) else "error"
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        row["traceback"] = traceback.format_exc()[-4000:]
        if isinstance(exc, KeyboardInterrupt):
            _finish(row, args.out, t_start)
            raise
    _finish(row, args.out, t_start)
    return 0 if row["status"] == "ok" else 3


def _finish(row: dict, out: str, t_start: float) -> None:
    row["wall_s"] = time.perf_counter() - t_start
    try:
        row["env"] = row.get("env") or environment()
    except Exception as exc:  # noqa: BLE001
        row["env"] = {"error": repr(exc)}
    _write_json(out, row)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return "out of memory" in str(exc).lower()


def _settings(cfg, loaded, trainer) -> dict[str, Any]:
    import torch

    from kitrec_fast.train.trainer import loss_path

    from kitrec_fast.backends import runtime_facts

    model = loaded.model
    # What really ran (attention kernel, activation dtype and autocast seen by the first step, LM
    # head dtype, fused kernels, compile): a baseline that differs in more than the backend shows here.
    facts = runtime_facts(model, trainer)
    attn = facts["attn_implementation"] or loaded.notes.get("attn_implementation")
    trainable, total = loaded.trainable_parameters()
    return {**facts,
        "backend": loaded.backend, "weights": loaded.weights, "compute_dtype": loaded.compute_dtype,
        "load_in_4bit": cfg.model.load_in_4bit, "quant_type": cfg.model.quant_type,
        "double_quant": cfg.model.double_quant, "attn_implementation": attn,
        "gradient_checkpointing": loaded.notes.get("gradient_checkpointing"),
        "padding_free": cfg.train.padding_free, "optimizer": cfg.train.optim,
        "loss": getattr(trainer, "kitrec_loss_path", None) or loss_path(cfg, torch.cuda.is_available()),
        "loss_chunk_size": cfg.train.loss_chunk_size,
        "label_smoothing": cfg.train.label_smoothing, "neftune_alpha": cfg.train.neftune_alpha,
        "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "lora_targets": list(cfg.lora.target_modules), "fused_lora_modules": loaded.fused_lora_modules,
        "trainable_params": trainable, "total_params": total, "seed": cfg.train.seed,
        "batch_size": cfg.train.per_device_batch_size, "max_seq_length": cfg.data.max_length,
        "unsloth_version": loaded.notes.get("unsloth_version"),
        "init_adapter": bool(getattr(loaded, "init_adapter", None)),
    }


def _tokenizer(cfg):
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.render.tokenizer import load_tokenizer

    return load_tokenizer(cfg.data.tokenizer or resolve_model_path(cfg.model.name))


def _model_config(cfg) -> dict[str, Any]:
    from kitrec_fast.backends.common import resolve_model_path

    path = Path(resolve_model_path(cfg.model.name))
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(cfg.model.name).to_dict()


def _train_once(cfg, loaded, tokenizer, ds, torch, out_dir: str, on_step: Callable | None = None):
    """A fresh trainer over ``ds`` (in order); returns (trainer, timer, recorder) after training.
    ``on_step(trainer, timer, recorder)`` runs after every step (after the timer's mark); when it
    returns True, training stops after that step."""
    from transformers import TrainerCallback

    from kitrec_fast.train.trainer import make_trainer

    timer = StepTimer(torch)
    trainer = make_trainer(cfg, loaded.model, tokenizer, ds, None, out_dir, [timer.callback])
    sequential_sampler(trainer)
    recorder = BatchRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    if on_step is not None:
        class _OnStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if on_step(trainer, timer, recorder):
                    control.should_training_stop = True

        trainer.add_callback(_OnStep())
    trainer.train()
    return trainer, timer, recorder


def _run_throughput(spec, cfg, backend, torch, row, out_path: str | None = None,
                    t_start: float | None = None) -> None:
    """Load, train ``warmup + timed`` steps, fill ``row``; with ``out_path`` the row is also written
    after every step (status ``partial``) so that a run stopped at its limit leaves its figures.
    With ``timed_auto`` the timed count is chosen after the warm-up (``choose_timed_steps``)."""
    import gc

    t_start = time.perf_counter() if t_start is None else t_start
    cap = apply_mem_cap(torch, spec.get("mem_cap_gib"), float(spec.get("context_reserve_gib", 0.5)))
    t0 = time.perf_counter()
    loaded = backend.load_model(cfg)
    if spec.get("init_adapter"):
        load_initial_adapter(loaded, spec["init_adapter"])
    row["timing_load_s"] = time.perf_counter() - t0
    mem_load = memory_stats(torch)
    fresh_peak(torch, gc)
    warm, bsz = int(spec.get("warmup_steps", 0)), cfg.train.per_device_batch_size
    auto = spec.get("timed_auto")
    if auto and warm < 1:
        raise ValueError("timed_auto needs at least one warm-up step to measure")
    # with an automatic count the trainer is built for the most steps and stopped after the chosen ones
    timed = int(auto[1]) if auto else int(spec["timed_steps"])
    mcfg = _model_config(cfg)
    ds = build_dataset(spec["data"], (warm + timed) * bsz, cfg.train.seed, int(mcfg["vocab_size"]))
    tokenizer = _tokenizer(cfg)
    grads, unhook = capture_first_grads(loaded.model) if spec.get("save_grads") else ({}, lambda: None)
    row.update({"model": _model_record(spec, mcfg), "env": environment()})
    mem = {"after_load": mem_load, "first_step": None}
    choice: dict[str, Any] = {}

    def fill(trainer, timer, rec) -> None:
        row.update(_throughput_fields(spec, cfg, mcfg, loaded, trainer, timer, rec, torch, cap, mem, warm,
                                      choice.get("chosen", timed), choice))

    def progress(trainer, timer, rec) -> bool:
        nonlocal timed
        t = time.perf_counter()
        done = len(timer.step_s)
        if done == 1:  # the first step's peak (the compile), then a fresh window for the steps after it
            mem["first_step"] = memory_stats(torch)
            fresh_peak(torch, gc)
        if auto and done == warm:
            left = float(spec.get("time_limit_s") or float("inf")) - (time.perf_counter() - t_start)
            timed = choose_timed_steps(timer.step_s[-1], left, int(auto[0]), int(auto[1]))
            choice.update({"auto": True, "min": int(auto[0]), "max": int(auto[1]), "from_step_s": timer.step_s[-1],
                           "left_s": left, "chosen": timed})
        fill(trainer, timer, rec)
        row["status"] = "partial"
        if out_path:
            _write_json(out_path, row)
        timer.exclude(time.perf_counter() - t)  # writing the row is not part of the next step
        return done >= warm + timed

    with tempfile.TemporaryDirectory(prefix="kitrec-bench-") as tmp:
        trainer, timer, rec = _train_once(cfg, loaded, tokenizer, ds, torch, tmp, progress)
    unhook()
    steps = timer.step_s
    if len(steps) != warm + timed or len(rec.batches) < warm + timed:
        raise RuntimeError(f"expected {warm + timed} steps, timed {len(steps)} with {len(rec.batches)} batches")
    fill(trainer, timer, rec)
    if spec.get("save_grads"):
        from safetensors.torch import save_file

        save_file({grad_key(k): v.contiguous() for k, v in grads.items()}, spec["save_grads"])
        row["grads"] = {"file": Path(spec["save_grads"]).name, "tensors": len(grads)}
    row["status"] = "ok"


def _throughput_fields(spec, cfg, mcfg, loaded, trainer, timer, rec, torch, cap, mem, warm, timed,
                       choice) -> dict[str, Any]:
    """The row's figures over the steps finished so far (the timed ones after the warm-up)."""
    from benchmarks.training.flops import step_flops

    bsz = cfg.train.per_device_batch_size
    steps = timer.step_s
    timed_steps = steps[warm:warm + timed]
    n = len(timed_steps)
    timed_batches = rec.batches[warm:warm + n]
    total_t = sum(timed_steps)
    tok = {k: sum(b[k] for b in timed_batches) for k in ("all", "nonpad", "trained", "samples")}
    cal = spec.get("calibration") or {}
    flops = [step_flops(mcfg, b["seq_lens"], b["trained"], cfg.lora.r, cfg.lora.target_modules) for b in timed_batches]
    flops_total = sum(f["total"] for f in flops)
    achieved = flops_total / total_t / 1e12 if total_t > 0 else None
    peak = cal.get("peak_tflops")
    layers = int(mcfg["num_hidden_layers"])
    return {
        "settings": _settings(cfg, loaded, trainer),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda},
        "data": {**{k: v for k, v in spec["data"].items() if k != "order"},
                 "rows_per_step": bsz, "batch_sha1": [b["sha1"] for b in rec.batches[: len(steps)]],
                 "tokens_per_step": {k: tok[k] / n for k in ("all", "nonpad", "trained")} if n else None},
        "steps": {"warmup": warm, "timed": timed, "done": len(steps), "warmup_s": steps[:warm], "timed_s": timed_steps,
                  "timed_choice": choice or {"auto": False},
                  # the first step includes the fast path's compile (and the first CUDA kernels' loading)
                  "first_step_s": steps[0] if steps else None, **step_stats(timed_steps)},
        "throughput": {
            "tokens_per_s_all": tok["all"] / total_t, "tokens_per_s_nonpad": tok["nonpad"] / total_t,
            "tokens_per_s_trained": tok["trained"] / total_t, "samples_per_s": tok["samples"] / total_t,
        } if total_t > 0 else None,
        "memory": _memory_fields(torch, cap, mem, len(steps)),
        "mfu": {"model_tflops_per_step": flops_total / n / 1e12 if n else None,
                "breakdown_tflops_per_step": {k: sum(f[k] for f in flops) / n / 1e12
                                              for k in ("linear", "attention", "lora", "lm_head")} if n else None,
                "achieved_tflops": achieved, "reference_tflops": peak,
                "reference_dtype": cal.get("dtype"),
                "mfu": achieved / peak if peak and achieved is not None else None},
        "per_layer": {"layers": layers,
                      "step_ms_per_layer": 1000 * statistics.median(timed_steps) / layers if n else None},
        "losses": list(timer.losses),
    }


def _memory_fields(torch, cap, mem: dict, done: int) -> dict[str, Any]:
    """After load; the first step's peak; the steady-state peak of the steps after it (its own window,
    opened after the first step); training: the larger of the two (what a run of these steps needs)."""
    now = memory_stats(torch)
    first = mem.get("first_step") or (now if done >= 1 else None)
    steady = now if done >= 2 else None
    return {"device": "cuda" if torch.cuda.is_available() else "cpu", "cap": cap, "after_load": mem["after_load"],
            "first_step": first, "steady": steady,
            "training": peak_max(first, steady) if first else now}


def _model_record(spec, mcfg) -> dict[str, Any]:
    layers = int(mcfg["num_hidden_layers"])
    full = int(spec.get("full_layers") or layers)
    return {"id": spec.get("model_label") or spec["model"], "path": spec["model"],
            "kind": spec.get("model_kind", "unknown"), "layers": layers, "full_layers": full,
            "reduced_depth": layers < full, "hidden_size": mcfg["hidden_size"],
            "intermediate_size": mcfg["intermediate_size"], "heads": mcfg["num_attention_heads"],
            "kv_heads": mcfg.get("num_key_value_heads"), "head_dim": mcfg.get("head_dim"),
            "vocab_size": mcfg["vocab_size"]}


def _run_ceiling(spec, cfg, backend, torch, row, out_path: str) -> None:
    """Longest fixed length that trains at the config's batch size under each memory cap.

    One process per backend: the caps are raised in ascending order (a cap can be raised at any
    time), and lengths ascend within a cap; an OOM ends the cap and the next cap resumes at the
    length that failed. Each attempt is a fresh trainer; after an OOM the failed step's tensors
    are released before the next attempt. A length that fits below a cap also fits above it.
    """
    caps = sorted(float(c) for c in spec["caps_gib"])
    lengths = sorted(int(x) for x in spec["lengths"])
    reserve = float(spec.get("context_reserve_gib", 0.5))
    steps = int(spec.get("ceiling_steps", 2))
    cfg.train.max_steps = steps
    mcfg = _model_config(cfg)
    cap_info = apply_mem_cap(torch, caps[0], reserve)
    attempts: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        loaded = backend.load_model(cfg)
    except BaseException as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        loaded = None
        attempts.append({"cap_gib": caps[0], "seq_len": None, "ok": False, "stage": "load"})
    mem_load = memory_stats(torch)
    tokenizer = _tokenizer(cfg)
    import gc

    def record(status: str) -> None:
        row.update({"status": status, "model": _model_record(spec, mcfg),
                    "settings": _settings(cfg, loaded, None) if loaded is not None else {},
                    "ceiling": {"batch_size": cfg.train.per_device_batch_size, "lengths": lengths,
                                "steps_per_attempt": steps, "by_cap": result, "attempts": attempts,
                                "cap": cap_info, "after_load": mem_load,
                                "trained_fraction": spec["data"]["trained_fraction"]}})

    li, best = 0, None  # a length that fit under a smaller cap fits under a larger one
    for cap in caps:
        if loaded is None:
            break
        apply_mem_cap(torch, cap, reserve)
        key = str(int(cap) if cap.is_integer() else cap)
        while li < len(lengths):
            L = lengths[li]
            data = {"mode": "fixed", "seq_len": L, "trained_fraction": spec["data"]["trained_fraction"]}
            ds = build_dataset(data, steps * cfg.train.per_device_batch_size, cfg.train.seed, int(mcfg["vocab_size"]))
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            ok, err = True, None
            try:
                with tempfile.TemporaryDirectory(prefix="kitrec-bench-") as tmp:
                    trainer, timer, _ = _train_once(cfg, loaded, tokenizer, ds, torch, tmp)
                del trainer
            except BaseException as exc:  # noqa: BLE001
                if not _is_oom(exc):
                    raise
                ok, err = False, f"{type(exc).__name__}"
            mem = memory_stats(torch)
            attempts.append({"cap_gib": cap, "seq_len": L, "ok": ok, "error": err, **mem})
            loaded.model.zero_grad(set_to_none=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if ok:
                best = L
                li += 1
            result[key] = {"max_seq_len": best, "first_oom_seq_len": lengths[li] if li < len(lengths) else None,
                           "grid_exhausted": li >= len(lengths), "complete": not ok or li >= len(lengths)}
            # progress on disk after every attempt: a run stopped at the time limit keeps what it found
            record("partial")
            _write_json(out_path, row)
            if not ok:
                break  # a bigger cap retries this same length
        result.setdefault(key, {"max_seq_len": best, "first_oom_seq_len": None, "grid_exhausted": True,
                                "complete": True})
    record("ok")


if __name__ == "__main__":
    sys.exit(main())
