"""What staging and syncing cost a checkpoint save (kitrec_fast/artifacts/checkpoints.py).

A save writes the same files either way (adapter safetensors, optimizer state, scheduler, RNG state,
tokenizer); the reliable save also syncs every file and the folder and renames it into place. This
writes checkpoint-shaped folders both ways and times them:

* ``plain``: written in place, not synced (what the Trainer does by itself)
* ``staged``: written to ``.staging/checkpoint-N``, then :func:`seal` (fsync files + folder, rename)

Sizes: ``smoke`` is the tiny test run's checkpoint (65,536 LoRA parameters, the 18.7 MB Qwen3
tokenizer); ``14b-r32`` is Qwen3-14B's LoRA at r=32 on all seven projections (128.5M parameters,
fp32 weights and Adam moments: 0.51 GB adapter + 1.03 GB optimizer), ``--scale`` shrinks it.

    python benchmarks/cpu/checkpoint_save.py --sizes smoke 14b-r32 --scale 0.25 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Qwen3-14B: 40 layers, hidden 5120, 8 KV heads of 128, MLP 17408; LoRA r=32 on q,k,v,o,gate,up,down.
_14B_LAYER = 32 * ((5120 + 5120) * 2 + (5120 + 1024) * 2 + (5120 + 17408) * 3)
SIZES = {"smoke": 65_536, "14b-r32": 40 * _14B_LAYER}
TOKENIZER_BYTES = 18_666_464


def write_checkpoint(folder: Path, params: int) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    chunk = 1 << 22
    weights = {f"lora.{i}": torch.randn(min(chunk, params - i)) for i in range(0, params, chunk)}
    save_file(weights, str(folder / "adapter_model.safetensors"))
    state = {i: {"exp_avg": w.clone(), "exp_avg_sq": w.clone(), "step": torch.tensor(10.0)}
             for i, w in enumerate(weights.values())}
    torch.save({"state": state, "param_groups": [{"lr": 2e-4}]}, folder / "optimizer.pt")
    torch.save({"last_epoch": 10}, folder / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "tokenizer.json").write_bytes(b"t" * TOKENIZER_BYTES)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))


def one(root: Path, params: int, staged: bool, n: int) -> float:
    from kitrec_fast.artifacts.checkpoints import STAGING, seal

    t0 = time.perf_counter()
    if staged:
        tmp = root / STAGING / f"checkpoint-{n}"
        write_checkpoint(tmp, params)
        seal(tmp, root / f"checkpoint-{n}", root)
    else:
        write_checkpoint(root / f"checkpoint-{n}", params)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["smoke", "14b-r32"], choices=sorted(SIZES))
    ap.add_argument("--scale", type=float, default=1.0, help="Shrink the 14b size (disk and time).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="Where to write (default: a temporary folder).")
    args = ap.parse_args(argv)
    base = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    results = []
    for size in args.sizes:
        params = SIZES[size] if size == "smoke" else int(SIZES[size] * args.scale)
        times = {"plain": [], "staged": []}
        for r in range(args.repeats):
            for mode in ("plain", "staged"):  # alternated: a slow spell of the disk hits both
                root = base / f"{size}-{mode}"
                times[mode].append(one(root, params, mode == "staged", r))
                shutil.rmtree(root)
        plain, staged = statistics.median(times["plain"]), statistics.median(times["staged"])
        row = {"size": size, "lora_params": params, "plain_s": round(plain, 3), "staged_s": round(staged, 3),
               "extra_s": round(staged - plain, 3), "extra_pct": round(100 * (staged - plain) / plain, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
