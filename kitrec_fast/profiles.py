"""GPU memory profiles: fit a recipe to a 16, 24, 48 or 80 GB card without touching its optimisation.

A profile sets only what decides the memory peak: the token budget (``data.max_length``), the
candidates kept per prompt (``data.max_candidates``), the micro-batch with gradient accumulation
(their product stays 32, the published effective batch) and the gradient-checkpointing mode. The
learning rate, schedule, warmup, weight decay, epochs, label smoothing, NEFTune and LoRA are never
changed: a profile must not turn into a different training recipe.

Why these values (rough budget of the fast path, Qwen3-14B, sizes in GiB; estimates, not measurements):

* weights: 40 layers x 330M projection parameters in nf4 with double quant (~0.52 byte each,
  ~6.3) + embeddings and LM head kept in 16 bit (2 x 151,936 x 5,120, ~2.9): **~9.2**;
* LoRA r32 on all seven projections: ~128M trainable parameters; fp32 weights, gradients and the
  two AdamW moments: **~1.9** (r24 for SingleFT: ~1.4);
* activations with Unsloth's offloaded checkpointing: each layer's input goes to host RAM, so the
  GPU holds the one layer being recomputed and its gradients, ~0.3 MB per token (the 17,408-wide
  MLP dominates): **~0.9 at 3,072 tokens, ~1.5 at 5,120, ~2.9 at 2 x 5,120**. Standard (on-GPU)
  checkpointing also stores every layer's input, 40 x 5,120 x 2 bytes = 0.4 MB per token:
  **+1.9 per 5,120 tokens**;
* LM head: the chunked loss holds one chunk of 1,024 x 151,936 logits and its gradient at a time,
  **<= 1.2** whatever the sequence length;
* CUDA context, allocator fragmentation, dequantisation buffers: **~1-2**.

Totals: ~14-15 GiB for 1 x 3,072 (a T4 reports 14.7 GiB: the tightest profile; 1 x 5,120 would be
~15-16 and does not fit), ~15-16 GiB for 1 x 5,120 (24 GB cards, ~22 GiB usable), ~16-17 GiB for
2 x 5,120 (48 GB and 40 GB cards) and, with standard checkpointing, ~20-21 GiB for 2 x 5,120 on
80 GB. A 24 GB card could probably take 2 x 5,120 too; 1 x 32 keeps a margin for the longest rows
and costs little, because the loss is normalised over the whole effective batch (same gradient).

The peft baseline cannot use Unsloth's offloaded checkpointing (it uses non-reentrant torch
checkpointing, "standard") and has no fused LoRA kernels, so it needs ~2 GiB more per 5,120
tokens in a micro-batch; on 16 and 24 GB cards it may run out of memory where the fast path fits.

Settings the user set explicitly (on the command line or in their own recipe YAML) win over the
profile: any value that differs from the recipe file is kept and reported.

Data parallel (N GPUs under torchrun / accelerate launch): every GPU holds the whole model and its
own micro-batch, so the per-GPU memory is the one-GPU figure above; the profile keeps its
micro-batch and each process accumulates 32 / (micro-batch x N) micro-batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from kitrec_fast.config import RunConfig

PUBLISHED_MAX_LENGTH = 5120
PUBLISHED_MAX_CANDIDATES = 50
EFFECTIVE_BATCH = 32
PROFILE_NAMES = ("16gb", "24gb", "48gb", "80gb")
GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryProfile:
    """The memory-relevant settings for one class of card, each with the reason it was chosen."""

    name: str
    cards: str
    max_length: int
    max_candidates: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: str  # for the unsloth backend; the peft backend always uses "standard"
    reasons: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, MemoryProfile] = {
    "16gb": MemoryProfile(
        "16gb", "T4 16 GB, RTX 4080/A4000 16 GB", 3072, 30, 1, 32, "unsloth",
        reasons={
            "max_length": "5,120 tokens put the fast path at ~15-16 GiB, over the 14.7 GiB of a T4; 3,072 brings it to "
                          "~14-15 GiB (next knobs if it still runs out: train.loss_chunk_size=512, data.max_length=2048)",
            "max_candidates": "30 candidates keep the prompt inside 3,072 tokens without cutting the "
                              "user's history to the bone (the ground truth is always kept)",
            "batch": "one row per micro-batch halves the activation peak; 32 accumulation steps keep the "
                     "effective batch of 32 (the loss is normalised over the whole effective batch)",
            "gradient_checkpointing": "Unsloth's offloaded checkpointing moves every layer's input to "
                                      "host RAM (~0.4 MB per token off the GPU)",
        }),
    "24gb": MemoryProfile(
        "24gb", "L4 24 GB, A10G, RTX 3090/4090", 5120, 50, 1, 32, "unsloth",
        reasons={
            "max_length": "the published 5,120-token budget fits at one row per micro-batch (~15-16 GiB)",
            "max_candidates": "published value",
            "batch": "two rows of 5,120 tokens (~17 GiB) leave little margin on the ~22 GiB these cards "
                     "report; 1 x 32 keeps the effective batch of 32 and the same gradient",
            "gradient_checkpointing": "offloaded checkpointing keeps layer inputs off the GPU",
        }),
    "48gb": MemoryProfile(
        "48gb", "A100 40 GB, A6000/L40S 48 GB", 5120, 50, 2, 16, "unsloth",
        reasons={
            "max_length": "published value",
            "max_candidates": "published value",
            "batch": "the published 2 x 16 fits (~16-17 GiB with offloaded checkpointing) even on a 40 GB A100",
            "gradient_checkpointing": "offloading keeps a 40 GB card far from its limit at 2 x 5,120 tokens",
        }),
    "80gb": MemoryProfile(
        "80gb", "A100 80 GB, H100, H200", 5120, 50, 2, 16, "standard",
        reasons={
            "max_length": "published value",
            "max_candidates": "published value",
            "batch": "published 2 x 16",
            "gradient_checkpointing": "the ~4 GiB of layer inputs at 2 x 5,120 tokens fit on the card, so "
                                      "offloading them buys nothing and costs a host round-trip per layer "
                                      "and ~4 GiB of host RAM (tight on a 12 GB Colab VM); "
                                      "standard (non-reentrant torch) checkpointing keeps them on the GPU",
        }),
}

# Lower bound of the usable memory torch reports for each class (total_memory, GiB). Cards report
# less than their label: a T4 ~14.7, an L4 ~22, an A100-40GB ~39.4, an 80 GB card ~79.
_THRESHOLDS_GIB = (("80gb", 70.0), ("48gb", 36.0), ("24gb", 20.0), ("16gb", 0.0))
_SMALLEST_USABLE_GIB = 14.0


def profile_for_memory(total_bytes: int) -> str:
    """The largest profile a card with ``total_bytes`` of memory can run."""
    gib = total_bytes / GIB
    for name, floor in _THRESHOLDS_GIB:
        if gib >= floor:
            return name
    return "16gb"  # unreachable: the last floor is 0


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    bf16: bool


def detect_gpu() -> Optional[GpuInfo]:
    """The first CUDA device, or None on a machine without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(props.name, int(props.total_memory), bool(torch.cuda.is_bf16_supported()))


@dataclass
class ProfileRow:
    setting: str
    before: Any
    after: Any
    reason: str


@dataclass
class ProfilePlan:
    """What a profile does to one config: the new config, a row per setting, notes and warnings."""

    profile: Optional[str]  # None: nothing applied (auto without a GPU)
    config: RunConfig
    rows: list[ProfileRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed only
    warnings: list[str] = field(default_factory=list)  # departures from the published recipe: printed + model card


def _recipe_baseline(cfg: RunConfig) -> Optional[RunConfig]:
    """The recipe file as published, to tell the user's explicit overrides from recipe values."""
    from kitrec_fast.config import config_from_dict
    from kitrec_fast.recipes import load_recipe

    try:
        return config_from_dict(load_recipe(cfg.recipe))
    except (FileNotFoundError, ValueError):  # a custom config with no recipe file behind it
        return None


def plan_profile(cfg: RunConfig, profile: str, gpu: Optional[GpuInfo] = None, world_size: int = 1) -> ProfilePlan:
    """Decide what ``profile`` changes in ``cfg``; pure (no printing, no GPU query).

    ``profile`` is one of PROFILE_NAMES or "auto" (then ``gpu`` decides; None means no GPU).
    ``world_size`` data-parallel processes (one per GPU) share the effective batch: each keeps the
    profile's micro-batch (a per-card memory decision) and accumulates
    ``32 / (micro-batch x world_size)`` micro-batches (see ``kitrec_fast.parallel.distribute``).
    """
    from kitrec_fast.parallel import distribute

    notes: list[str] = []
    warnings: list[str] = []
    if profile == "auto":
        if gpu is None:
            return ProfilePlan(None, _copy_with_warnings(distribute(cfg, world_size), []), notes=[
                "--profile auto: no CUDA GPU found, the recipe's memory settings are left unchanged"])
        chosen = profile_for_memory(gpu.total_bytes)
        notes.append(f"--profile auto: {gpu.name} with {gpu.total_bytes / GIB:.1f} GiB -> {chosen}")
        if gpu.total_bytes / GIB < _SMALLEST_USABLE_GIB:
            notes.append(f"{gpu.total_bytes / GIB:.1f} GiB is below what the smallest profile (16gb) assumes; "
                         "expect out-of-memory errors, try data.max_length=2048")
        profile = chosen
    if profile not in PROFILES:
        raise ValueError(f"unknown memory profile {profile!r}; choose auto or one of {', '.join(PROFILE_NAMES)}")
    prof = PROFILES[profile]
    base = _recipe_baseline(cfg)

    def user_set(section: str, key: str) -> bool:
        if base is None:
            return False
        return getattr(getattr(cfg, section), key) != getattr(getattr(base, section), key)

    rows: list[ProfileRow] = []
    data_changes: dict[str, Any] = {}
    train_changes: dict[str, Any] = {}

    def decide(section: str, key: str, value: Any, reason: str, changes: dict[str, Any]) -> None:
        current = getattr(getattr(cfg, section), key)
        if user_set(section, key):
            rows.append(ProfileRow(f"{section}.{key}", current, current,
                                   f"kept: set explicitly (the profile would pick {value})"))
            return
        changes[key] = value
        rows.append(ProfileRow(f"{section}.{key}", current, value, reason))

    decide("data", "max_length", prof.max_length, prof.reasons["max_length"], data_changes)
    decide("data", "max_candidates", prof.max_candidates, prof.reasons["max_candidates"], data_changes)
    new_max_candidates = data_changes.get("max_candidates", cfg.data.max_candidates)
    if cfg.data.min_candidates > new_max_candidates:
        # DataConfig requires min <= max; the floor follows the new ceiling rather than failing.
        data_changes["min_candidates"] = new_max_candidates
        rows.append(ProfileRow("data.min_candidates", cfg.data.min_candidates, new_max_candidates,
                               "lowered to stay <= max_candidates"))

    # Micro-batch and accumulation are one decision: if the user set either, both are theirs.
    t = cfg.train
    if user_set("train", "per_device_batch_size") or user_set("train", "gradient_accumulation_steps"):
        rows.append(ProfileRow("train.batch (micro x accum)",
                               f"{t.per_device_batch_size} x {t.gradient_accumulation_steps}",
                               f"{t.per_device_batch_size} x {t.gradient_accumulation_steps}",
                               f"kept: set explicitly (the profile would pick "
                               f"{prof.per_device_batch_size} x {prof.gradient_accumulation_steps})"))
    else:
        train_changes["per_device_batch_size"] = prof.per_device_batch_size
        train_changes["gradient_accumulation_steps"] = prof.gradient_accumulation_steps
        rows.append(ProfileRow("train.batch (micro x accum)",
                               f"{t.per_device_batch_size} x {t.gradient_accumulation_steps}",
                               f"{prof.per_device_batch_size} x {prof.gradient_accumulation_steps}",
                               prof.reasons["batch"]))

    if cfg.backend == "peft":
        mode = "standard"
        ckpt_reason = ("the peft baseline has no offloaded checkpointing; non-reentrant torch checkpointing "
                       "keeps every layer's input on the GPU (~2 GiB per 5,120 tokens more than the fast path)")
    else:
        mode, ckpt_reason = prof.gradient_checkpointing, prof.reasons["gradient_checkpointing"]
    decide("train", "gradient_checkpointing", mode, ckpt_reason, train_changes)

    new = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, **data_changes),
        train=dataclasses.replace(cfg.train, **train_changes),
    )
    new = distribute(new, world_size)
    if world_size > 1:
        rows.append(ProfileRow("train.world_size (processes)", 1, world_size,
                               f"per process {new.train.per_device_batch_size} x "
                               f"{new.train.gradient_accumulation_steps}: the effective batch of "
                               f"{new.train.effective_batch_size} is split over {world_size} processes (GPUs); "
                               "memory per GPU is that of the micro-batch, as on one GPU"))

    # What the run's readers must know: every departure from the published recipe.
    if new.data.max_length < PUBLISHED_MAX_LENGTH:
        warnings.append(f"memory profile {profile}: max_length {new.data.max_length} < published "
                        f"{PUBLISHED_MAX_LENGTH} tokens (more history and candidates are cut than in the "
                        "published KitREC training)")
    if new.data.max_candidates < PUBLISHED_MAX_CANDIDATES:
        warnings.append(f"memory profile {profile}: {new.data.max_candidates} candidates per training prompt "
                        f"< published {PUBLISHED_MAX_CANDIDATES}")
    effective = new.train.effective_batch_size
    if effective != EFFECTIVE_BATCH and not cfg.smoke:
        warnings.append(f"effective batch {effective} != published {EFFECTIVE_BATCH} "
                        f"({new.train.per_device_batch_size} x {new.train.gradient_accumulation_steps}"
                        + (f" x {world_size} processes" if world_size > 1 else "") + ", set explicitly)")

    if profile == "16gb":
        if gpu is not None and not gpu.bf16:
            warnings.append(f"{gpu.name} has no bfloat16: computed in float16 (published: bfloat16)")
        elif gpu is None:
            notes.append("a T4 has no bfloat16: compute falls back to float16 automatically "
                         "(model.compute_dtype bfloat16 -> float16, see backends.common.resolve_dtype)")
    elif gpu is not None and not gpu.bf16:
        warnings.append(f"{gpu.name} has no bfloat16: computed in float16 (published: bfloat16)")
    if cfg.backend == "peft" and profile in ("16gb", "24gb"):
        notes.append(f"the peft baseline needs ~2 GiB more per 5,120-token micro-batch than the fast path; on "
                     f"{profile} it may run out of memory: lower data.max_length "
                     f"({'2048' if profile == '16gb' else '4096'}) or use --backend unsloth")
    notes.append("memory figures behind this profile are estimates (see kitrec_fast/profiles.py); "
                 "learning rate, schedule, epochs, smoothing, NEFTune and LoRA are the recipe's")
    new = _copy_with_warnings(new, list(getattr(cfg, "_warnings", [])) + warnings)
    return ProfilePlan(profile, new, rows, notes, warnings)


def _copy_with_warnings(cfg: RunConfig, warnings: list[str]) -> RunConfig:
    # dataclasses.replace re-runs validation and gives the caller an object it may mutate freely.
    out = dataclasses.replace(cfg)
    out._warnings = list(warnings)  # read by train.run into summary.json and the model card
    return out


def profile_table(plan: ProfilePlan):
    """A rich table of the plan: one row per setting with the value before, after and why."""
    from rich.table import Table

    title = f"memory profile {plan.profile}" if plan.profile else "memory profile (none applied)"
    table = Table(title=title, show_lines=False)
    table.add_column("setting", style="cyan", no_wrap=True)
    table.add_column("before")
    table.add_column("chosen", style="bold")
    table.add_column("why")
    for row in plan.rows:
        table.add_row(row.setting, str(row.before), str(row.after), row.reason)
    return table


def apply_profile(cfg: RunConfig, profile: str, console=None, gpu: Optional[GpuInfo] = None,
                  world_size: int = 1) -> RunConfig:
    """Apply a memory profile ("auto" or one of PROFILE_NAMES) for ``world_size`` data-parallel
    processes; prints what was chosen and why.

    Returns a new config; ``cfg._warnings`` on it lists departures from the published recipe (the
    run's model card repeats them).
    """
    if console is None:
        from kitrec_fast.console import make_console

        console = make_console()
    if gpu is None:
        # Also for an explicit profile: bf16 support decides the float16 warning of the model card.
        gpu = detect_gpu()
    plan = plan_profile(cfg, profile, gpu, world_size)
    if plan.rows:
        console.print(profile_table(plan))
    for note in plan.notes:
        console.print(f"[cyan]note[/] {note}")
    for warning in plan.warnings:
        console.print(f"[yellow]warning[/] {warning}")
    return plan.config
