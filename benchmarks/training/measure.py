"""What a benchmark worker measures: step-time statistics, the machine, the card's matmul rate,
peak memory (and an optional cap on it), a per-step timer, and the first step's LoRA gradients."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

GIB = 2**30
# Timed steps when the count is chosen from the warm-up (``choose_timed_steps``): fewer than 3 give no
# median worth the name; more than 10 add little to it and take time from the other worker.
TIMED_MIN, TIMED_MAX = 3, 10


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def step_stats(step_s: list[float]) -> dict[str, float | int]:
    """Median and spread of the timed step durations (seconds)."""
    if not step_s:
        return {"n": 0}
    med = statistics.median(step_s)
    return {
        "n": len(step_s), "median_s": med, "mean_s": statistics.fmean(step_s),
        "min_s": min(step_s), "max_s": max(step_s),
        "p25_s": percentile(step_s, 0.25), "p75_s": percentile(step_s, 0.75),
        "stdev_s": statistics.stdev(step_s) if len(step_s) > 1 else 0.0,
        # (max - min) / median: the whole range as a share of the typical step
        "spread_rel": (max(step_s) - min(step_s)) / med if med > 0 else float("nan"),
    }


def choose_timed_steps(step_s: float | None, left_s: float, lo: int = TIMED_MIN, hi: int = TIMED_MAX,
                       reserve_s: float = 5.0, reserve_frac: float = 0.1) -> int:
    """How many steps to time: as many of the measured warm-up step's length as fill ``left_s`` (the
    worker's share of the budget still left), at least ``lo`` and at most ``hi``.

    ``reserve_frac`` of what is left (steps vary; a slower one must not cut the last) and ``reserve_s``
    (the row, the environment record, the process's exit) stay unused. A warm-up step that includes
    the compile overestimates a step, which can only make the count smaller: still at least ``lo``.
    """
    if not step_s or step_s <= 0:
        return hi
    usable = left_s * (1 - reserve_frac) - reserve_s
    return min(hi, max(lo, int(usable // step_s))) if usable > 0 else lo


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB


def environment() -> dict[str, Any]:
    """GPU, driver, library versions, git commit: enough to tell two runs' setups apart."""
    import torch

    from kitrec_fast.artifacts.rundir import environment_record

    env = environment_record()
    env["driver"] = driver_version() if torch.cuda.is_available() else None
    env["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu_model()}"
    env["cpu"] = cpu_model()
    env["cpu_threads"] = torch.get_num_threads()
    # Where the tree was copied without .git (the GPU machine), the harness passes the commit on.
    env["git_commit"] = env.get("git_commit") or os.environ.get("KITREC_GIT_COMMIT")
    env["pytorch_cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    return env


def calibrate() -> dict[str, Any]:
    """Best dense matmul rate over a few square sizes: bf16 on a GPU, fp32 on a CPU."""
    import torch

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    sizes = (4096, 8192, 12288) if cuda else (256, 512)
    results = []
    for n in sizes:
        a = torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype)
        b = torch.randn(n, n, device=a.device, dtype=dtype)
        iters = 20 if cuda else 5
        for _ in range(3):
            torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        results.append({"n": n, "tflops": 2 * n**3 * iters / dt / 1e12})
        del a, b
    best = max(results, key=lambda r: r["tflops"])
    return {"dtype": str(dtype).replace("torch.", ""), "peak_tflops": best["tflops"], "by_size": results,
            "device": torch.cuda.get_device_name(0) if cuda else f"CPU: {cpu_model()}"}


def apply_mem_cap(torch, cap_gib: float | None, reserve_gib: float) -> dict[str, Any] | None:
    """Emulate a smaller card: cap what this process's caching allocator may hold.

    A real N GiB card also holds the CUDA context and driver allocations, which live outside
    PyTorch's allocator, so the allocator gets ``N - reserve_gib``.
    """
    if cap_gib is None or not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    frac = min(1.0, (cap_gib - reserve_gib) * GIB / total)
    torch.cuda.set_per_process_memory_fraction(frac, 0)
    return {"cap_gib": cap_gib, "context_reserve_gib": reserve_gib, "fraction": frac,
            "device_total_gib": total / GIB}


def memory_stats(torch) -> dict[str, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
                "allocated_gib": torch.cuda.memory_allocated() / GIB,
                "reserved_gib": torch.cuda.memory_reserved() / GIB}
    # CPU: only the process's peak resident set exists (monotone over the process's life).
    return {"peak_rss_gib": rss_peak_gib()}


def fresh_peak(torch, gc) -> None:
    """Start a new peak-memory window from what is really held: collect garbage and return the
    allocator's cached blocks first, so the window's reserved peak is this window's need and not
    what came before it (both backends alike; Unsloth's get_peft_model empties the cache itself)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_max(*windows: dict | None) -> dict[str, float]:
    """The peak over several windows of ``memory_stats`` (each ``peak_*`` figure's largest value)."""
    got = [w for w in windows if w]
    return {k: max(w[k] for w in got if k in w) for k in dict.fromkeys(k for w in got for k in w)
            if k.startswith("peak_")}


class StepTimer:
    """Synchronised wall-clock marks at the start of the first step and the end of every step.

    Step i's time is end(i) - end(i-1): everything the training loop does per step (data fetch,
    forward, backward, clipping, optimizer, logging) counts, as it does in a real run.
    """

    def __init__(self, torch):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if not timer.marks:
                    timer.sync()
                    timer.marks.append(time.perf_counter())
                    timer.paused.append(0.0)

            def on_step_end(self, args, state, control, **kw):
                timer.sync()
                timer.marks.append(time.perf_counter())
                timer.paused.append(0.0)
                control.should_save = False  # no checkpoint at the last step

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    timer.losses.append(float(logs["loss"]))

        self.callback = _CB()
        self.marks: list[float] = []
        self.paused: list[float] = []  # per mark: time after it that belongs to no step (writing the row)
        self.losses: list[float] = []
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def exclude(self, seconds: float) -> None:
        self.paused[-1] += seconds

    @property
    def step_s(self) -> list[float]:
        return [b - a - p for a, p, b in zip(self.marks, self.paused, self.marks[1:])]


def capture_first_grads(model) -> tuple[dict[str, Any], Callable[[], None]]:
    """Every trainable LoRA weight's gradient of the first backward, as backward accumulates it
    (``register_post_accumulate_grad_hook``): before the Trainer clips gradients, which would scale
    both backends' gradients to the same norm and hide a scale bug. Returns (store, remove)."""
    store: dict[str, Any] = {}
    handles = []
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" in name:
            def hook(p, name=name):
                if name not in store:  # gradient accumulation 1: the first call is the first step's
                    store[name] = p.grad.detach().float().cpu().clone()
            handles.append(param.register_post_accumulate_grad_hook(hook))
    return store, lambda: [h.remove() for h in handles]


def grad_key(name: str) -> str:
    """A LoRA weight's name without what differs between wrappers: from ``layers.N.`` on, adapter name dropped."""
    import re

    m = re.search(r"layers\.\d+\..*", name)
    return (m.group(0) if m else name).replace(".default", "")
