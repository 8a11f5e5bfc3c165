"""Build an architecture-only Qwen3-14B: the exact configuration, random bf16 weights, saved to disk.

Why: the benchmark must run where the real checkpoint cannot be downloaded (the GPU machine has no
network). Speed and memory of QLoRA training depend on the geometry, not on the weight values, so a
random-weight model with Qwen3-14B's exact config gives the same kernels, shapes and 4-bit footprint.
Both backends then load these very same files (each quantizes them to nf4 on load, as with
``model.weights=exact``).

Layout: one safetensors shard per decoder layer plus one for the embeddings and one for the final
norm + LM head, and a standard ``model.safetensors.index.json``. That keeps host RAM to one shard at a
time while building, and lets ``--link-from`` make a reduced-depth model (the first N layers) out of
symlinks to a full build without writing any weights again.

    # the full model (40 layers, ~29.5 GB on disk); --device cuda generates on the GPU (much faster)
    python benchmarks/gpu/build_arch_model.py --out /tmp/qwen3-14b-arch --device cuda
    # a 4-layer model sharing the full build's files (per-layer figures only!)
    python benchmarks/gpu/build_arch_model.py --out /tmp/qwen3-14b-arch-l4 --layers 4 --link-from /tmp/qwen3-14b-arch

Every tensor is drawn from its own generator seeded by (seed, tensor name), so layer i has the same
values whatever ``--layers`` is, and a rebuild gives identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# Qwen3-14B's published config.json (the fields that define the computation).
QWEN3_14B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 5120,
    "intermediate_size": 17408,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_sliding_window": False,
}
FULL_LAYERS = QWEN3_14B["num_hidden_layers"]
MARKER = "kitrec_arch_model.json"  # provenance file: says plainly these are random weights
EMBED_SHARD = "model-embed.safetensors"
HEAD_SHARD = "model-head.safetensors"


def layer_shard(i: int) -> str:
    return f"model-layer-{i:03d}.safetensors"


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise SystemExit(f"--override expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def arch_config(layers: int | None = None, overrides: dict[str, Any] | None = None):
    """The Qwen3-14B ``Qwen3Config`` (optionally fewer layers / test-sized overrides)."""
    from transformers import Qwen3Config

    values = {**QWEN3_14B, **(overrides or {})}
    if layers is not None:
        values["num_hidden_layers"] = layers
    # ``architectures`` names the model class in config.json (Qwen3-14B's own does): vLLM and loaders
    # that pick the class from the config refuse a config without it
    return Qwen3Config(**values, torch_dtype="bfloat16", architectures=["Qwen3ForCausalLM"])


def _shard_of(name: str) -> str:
    if name.startswith("model.layers."):
        return layer_shard(int(name.split(".")[2]))
    if name.startswith("model.embed_tokens."):
        return EMBED_SHARD
    return HEAD_SHARD  # model.norm, lm_head


def _tensor_seed(seed: int, name: str) -> int:
    # Stable across processes and machines (hash() is salted per process).
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def _param_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of every parameter, read off a meta-device model (no memory used)."""
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _make_tensor(name: str, shape: tuple[int, ...], seed: int, std: float, device: str):
    import torch

    if name.endswith("norm.weight"):
        # RMSNorm gains start at 1, as in a trained model's neighbourhood; random gains would only
        # add noise to the activations' scale.
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator(device=device)
    gen.manual_seed(_tensor_seed(seed, name))
    t = torch.empty(shape, dtype=torch.float32, device=device)
    t.normal_(0.0, std, generator=gen)
    return t.to(torch.bfloat16).cpu()


def _write_common(out: Path, config, meta: dict, weight_map: dict[str, str], sizes: dict[str, int]) -> None:
    config.save_pretrained(str(out))
    index = {"metadata": {"total_size": sum(sizes[f] for f in set(weight_map.values()))},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    from kitrec_fast.testkit.tokenizer import save_qwen3_tokenizer

    # The offline Qwen3 tokenizer (same vocabulary and special-token ids as the real one).
    save_qwen3_tokenizer(out)


def is_complete(path: str | os.PathLike) -> bool:
    """A finished build (the marker and the index are written last)."""
    return (Path(path) / MARKER).is_file() and (Path(path) / "model.safetensors.index.json").is_file()


def free_space_line(path: str | os.PathLike) -> str:
    """``df -h`` of the filesystem ``path`` is on (its nearest existing parent), for the build's log."""
    import shutil
    import subprocess

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        df = subprocess.run(["df", "-h", str(p)], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        df = ""
    return df or f"{p}: {shutil.disk_usage(p).free / 1e9:.1f} GB free"


def build(out: str | os.PathLike, layers: int | None = None, seed: int = 0, device: str = "cpu",
          overrides: dict[str, Any] | None = None, link_from: str | os.PathLike | None = None) -> Path:
    """Write the model to ``out`` and return the path; a complete existing build is reused."""
    out = Path(out)
    config = arch_config(layers, overrides)
    n_layers = config.num_hidden_layers
    meta = {
        "what": "architecture-only Qwen3-14B: exact configuration, RANDOM weights (not a trained model)",
        "layers": n_layers,
        "full_layers": (overrides or {}).get("num_hidden_layers", FULL_LAYERS),
        "seed": seed,
        "overrides": overrides or {},
        "builder": "benchmarks/gpu/build_arch_model.py",
    }
    marker = out / MARKER
    if marker.is_file() and (out / "model.safetensors.index.json").is_file():
        old = json.loads(marker.read_text())
        if {k: old.get(k) for k in ("layers", "seed", "overrides")} == {k: meta[k] for k in ("layers", "seed", "overrides")}:
            return out
        raise SystemExit(f"{out} holds a different build ({old}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    specs = _param_specs(config)
    shards: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape in specs:
        shards.setdefault(_shard_of(name), []).append((name, shape))
    weight_map = {name: shard for shard, items in shards.items() for name, _ in items}
    sizes: dict[str, int] = {}

    if link_from is not None:
        src = Path(link_from)
        src_meta = json.loads((src / MARKER).read_text())
        if src_meta.get("seed") != seed or src_meta.get("overrides") != (overrides or {}) or src_meta["layers"] < n_layers:
            raise SystemExit(f"--link-from {src}: build {src_meta} cannot provide {n_layers} layers of this model")
        for shard in shards:
            dst = out / shard
            if not dst.exists():
                dst.symlink_to((src / shard).resolve())
            sizes[shard] = dst.stat().st_size
        meta["linked_from"] = str(src.resolve())
        print(f"[arch] {len(shards)} shards linked from {src} (no weights written)", file=sys.stderr, flush=True)
        _write_common(out, config, meta, weight_map, sizes)
        return out

    from safetensors.torch import save_file

    need = 2 * sum(math.prod(shape) for _, shape in specs)  # bf16
    print(f"[arch] writing {need / 1e9:.2f} GB to {out}; df -h before:\n{free_space_line(out)}", file=sys.stderr,
          flush=True)
    std = float(config.initializer_range)
    t0 = time.perf_counter()
    for k, (shard, items) in enumerate(shards.items()):
        tensors = {name: _make_tensor(name, shape, seed, std, device) for name, shape in items}
        tmp = out / (shard + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / shard)  # a killed build never leaves a truncated shard behind
        sizes[shard] = (out / shard).stat().st_size
        print(f"[arch] {shard}: {sizes[shard] / 1e9:.2f} GB ({k + 1}/{len(shards)}, "
              f"{time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    _write_common(out, config, meta, weight_map, sizes)
    return out


def read_marker(path: str | os.PathLike) -> dict | None:
    """The provenance record of an architecture-only build, or None for any other model."""
    p = Path(path) / MARKER
    return json.loads(p.read_text()) if p.is_file() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="Output directory.")
    ap.add_argument("--layers", type=int, default=None,
                    help=f"Decoder layers (default {FULL_LAYERS}). Fewer layers = NOT the full model.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="Where random numbers are drawn: cpu or cuda.")
    ap.add_argument("--link-from", default=None, help="Reuse the shards of a deeper build (symlinks).")
    ap.add_argument("--link-from-if-built", default=None, metavar="DIR",
                    help="As --link-from when DIR holds a complete build, else write the weights (and say so).")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="Config override, for tests only (e.g. hidden_size=64); the report then names it.")
    args = ap.parse_args(argv)
    overrides = dict(_parse_override(s) for s in args.override)
    link = args.link_from
    if args.link_from_if_built and not link:
        if is_complete(args.link_from_if_built):
            link = args.link_from_if_built
        else:
            print(f"[arch] {args.link_from_if_built} holds no complete build: writing this model's weights",
                  file=sys.stderr, flush=True)
    path = build(args.out, args.layers, args.seed, args.device, overrides, link)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
