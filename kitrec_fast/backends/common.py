"""What both backends share: model resolution, dtype choice, and the loaded-model record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitrec_fast.fsio import cache_root  # noqa: F401  (re-exported: callers import it from here)

TINY_MODEL = "testkit:tiny-qwen3"


@dataclass
class LoadedModel:
    """A 4-bit base model with its LoRA adapter attached, ready for the trainer."""

    model: Any
    backend: str
    requested: str  # what the recipe asked for
    weights: str  # what was actually loaded (after any remapping)
    compute_dtype: str
    fused_lora_modules: int | None  # Unsloth fused-kernel modules; None on the peft path
    notes: dict = field(default_factory=dict)

    def trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return trainable, total



def resolve_model_path(name: str) -> str:
    """Hub id or directory as given; the offline tiny model is built once into the cache."""
    if name == TINY_MODEL:
        from kitrec_fast.testkit.tiny_model import save_tiny_qwen3

        return str(save_tiny_qwen3(cache_root() / "tiny-qwen3-v1"))
    return name


def resolve_dtype(name: str):
    """The compute dtype the hardware supports: bf16 needs a bf16-capable GPU, CPUs train in fp32."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if name in ("auto", "bfloat16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float16": torch.float16, "float32": torch.float32}[name]


def gradient_checkpointing_mode(setting: str, backend: str) -> str:
    """'unsloth' (offloaded), 'standard' (non-reentrant torch) or 'off' for a backend."""
    if setting == "auto":
        return "unsloth" if backend == "unsloth" else "standard"
    if setting == "unsloth" and backend != "unsloth":
        raise ValueError("train.gradient_checkpointing: 'unsloth' needs --backend unsloth; use 'standard'")
    return setting
