"""The base a QLoRA adapter was trained against, as a checkpoint vLLM can load.

The adapter learned its correction against dequant(W4), the 4-bit weights as training loaded them;
vLLM has no bitsandbytes loader. ``--base trained`` therefore serves a checkpoint made from those
weights: the base loaded exactly as the run loads it (backend, ``model.weights``, quant type, double
quant, compute dtype), every 4-bit layer dequantized by bitsandbytes (``PreTrainedModel.dequantize``)
and saved in the serving precision (bf16 on a GPU, fp32 on CPU).

It is built once per fingerprint (all of the above plus base, revision and bitsandbytes' version, which
sets the block size) into ``<cache>/trained-bases/``, in a child process (the run's backend may be Unsloth, and
its memory is returned before vLLM starts), its disk need checked before anything is written, and
renamed into place only when complete, like checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from kitrec_fast.eval.generate.options import GenerateError

MARKER = "trained_base.json"
BASES = ("auto", "original", "trained")


def resolve_base(requested: str, engine: str) -> str:
    """``auto`` keeps each engine's own protocol: hf serves the 4-bit model as trained, vLLM the original base."""
    if requested not in BASES:
        raise GenerateError(f"--base: must be auto, original or trained, got {requested!r}")
    if requested != "auto":
        return requested
    return "trained" if engine == "hf" else "original"


# Where the base choice came from, as generate_config.json and recommend --json record it.
FROM_OPTION, FROM_RUN, FROM_DEFAULT = "--base", "model.eval_base", "default"


def choose_base(option: Optional[str], runs: list[tuple[str, Any]], engine: str) -> tuple[str, str]:
    """``(base served on engine, where the choice came from)``: ``--base`` if given, else the runs'
    ``model.eval_base`` (``runs``: ``(name, RunConfig)`` of each ``--run``), else auto.

    One command serves its runs on one base, so runs whose keys serve different bases need ``--base``."""
    if option is not None:
        return resolve_base(option, engine), FROM_OPTION
    if not runs:
        return resolve_base("auto", engine), FROM_DEFAULT
    served = {resolve_base(cfg.model.eval_base, engine) for _, cfg in runs}
    if len(served) > 1:
        keys = ", ".join(f"{name}: {cfg.model.eval_base}" for name, cfg in runs)
        raise GenerateError(f"--base: the runs' model.eval_base ask for different bases on {engine} ({keys}); "
                            "one command serves one base: give --base, or use one command per base")
    return served.pop(), FROM_RUN


def describe_choice(base: str, source: str) -> str:
    """One line's worth: the base and why it was chosen."""
    why = {FROM_OPTION: "--base", FROM_RUN: "the run's model.eval_base", FROM_DEFAULT: "the engine's default"}[source]
    return f"{base} (from {why})"


def served_config(cfg, base: str):
    """The run's config as the hf engine loads it for ``base``: ``original`` is the checkpoint unquantized."""
    import dataclasses

    if base == "original" and cfg.model.load_in_4bit:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, load_in_4bit=False))
    return cfg


def _serving_dtype() -> str:
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def fingerprint(cfg) -> dict:
    """Everything the dequantized weights depend on (the block size is bitsandbytes' per version and
    platform; the build records the one the layers had)."""
    import bitsandbytes as bnb
    import torch

    from kitrec_fast.backends.common import resolve_dtype

    m = cfg.model
    return {"model": m.name, "revision": m.revision, "backend": cfg.backend, "weights": m.weights,
            "quant_type": m.quant_type, "double_quant": m.double_quant, "rocm": torch.version.hip is not None,
            "compute_dtype": str(resolve_dtype(m.compute_dtype)).replace("torch.", ""),
            "saved_dtype": _serving_dtype(), "bitsandbytes": bnb.__version__}


def _key(fp: dict) -> str:
    return hashlib.blake2b(json.dumps(fp, sort_keys=True).encode(), digest_size=8).hexdigest()


def trained_key(cfg) -> str:
    return _key(fingerprint(cfg))


def trained_base(cfg, console=None) -> tuple[str, dict]:
    """``(checkpoint dir, record)`` of the run's dequantized 4-bit base, built on first use."""
    from kitrec_fast.fsio import cache_root

    if not cfg.model.load_in_4bit:
        raise GenerateError("--base trained: this run trained on the unquantized base (model.load_in_4bit=false); "
                            "its trained base is the original one: use --base original (or auto)")
    fp = fingerprint(cfg)
    key = _key(fp)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.model.name).strip("_")
    path = cache_root() / "trained-bases" / f"{slug}-{key}"
    record = {"base": "trained", "fingerprint": key, "path": str(path), "made_from": fp}
    if (path / MARKER).is_file():
        return str(path), record
    if console is not None:
        console.print(f"[green]base[/] building the trained base of {cfg.model.name} (dequantized "
                      f"{cfg.model.quant_type} 4-bit, saved {fp['saved_dtype']}) into {path}")
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.eval.generate.trained_base",
                           json.dumps(cfg.to_dict()), str(path), json.dumps(fp)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise GenerateError(f"--base trained: building the dequantized base failed: {last.removeprefix('error: ')}")
    return str(path), record


def _build(cfg, path: Path, fp: dict) -> None:
    """In the child: load as the run loads, check the disk, dequantize, save atomically."""
    import torch

    import bitsandbytes as bnb

    from kitrec_fast.artifacts.diskspace import check_export_space
    from kitrec_fast.backends import get_backend
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.fsio import atomic_write_json, build_dir_atomically, make_shareable
    from kitrec_fast.render.tokenizer import load_tokenizer

    model = get_backend(cfg.backend).load_for_inference(cfg, None)
    dtype = getattr(torch, fp["saved_dtype"])
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    blocksizes = sorted({m.weight.quant_state.blocksize for m in layers})
    packed = sum(m.weight.numel() for m in layers)
    params = sum(p.numel() for p in model.parameters()) - packed + sum(m.in_features * m.out_features for m in layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_export_space(params, torch.finfo(dtype).bits // 8, path.parent)
    model = model.dequantize(dtype=dtype).to(dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config.torch_dtype = dtype

    def build(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        load_tokenizer(cfg.data.tokenizer or resolve_model_path(cfg.model.name)).save_pretrained(str(folder))
        make_shareable(folder)
        atomic_write_json(folder / MARKER, {"fingerprint": _key(fp), "made_from": fp, "parameters": params,
                                            "dequantized_layers": len(layers), "blocksize": blocksizes})

    build_dir_atomically(path, build, MARKER)


def main(argv: Optional[list[str]] = None) -> int:
    from kitrec_fast.config import config_from_dict
    from kitrec_fast.errors import run_cli

    def run(args: list[str]) -> int:
        cfg_json, path, fp_json = args
        _build(config_from_dict(json.loads(cfg_json)), Path(path), json.loads(fp_json))
        return 0

    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
