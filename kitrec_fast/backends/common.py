"""What both backends share: model resolution, dtype choice, and the loaded-model record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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



# how messages name the base model's setting (a run's config, or --model where a command takes one)
MODEL_OPTION = "model.name"


def resolve_model_path(name: str) -> str:
    """Hub id or directory as given; an offline test model (``testkit:...``) is built once into the cache."""
    if name.startswith("testkit:"):
        from kitrec_fast.testkit.tiny_model import TESTKIT_MODELS, testkit_model_path

        if name in TESTKIT_MODELS:
            return str(testkit_model_path(name, cache_root()))
    return name


def device_map():
    """This process's whole model on its own GPU (``LOCAL_RANK`` under torchrun / accelerate launch,
    else GPU 0); None on CPU. A data-parallel process holds a full replica on one device."""
    import torch

    if not torch.cuda.is_available():
        return None
    from kitrec_fast.parallel import local_rank

    return {"": local_rank()}


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


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


def runtime_facts(model, trainer=None) -> dict:
    """What a run really computes with, for environment.json and benchmark rows (both backends).

    ``attn_implementation`` (the attention kernel family), ``lm_head_dtype`` (the dtype the chunked
    loss multiplies in), ``compile`` (Unsloth's per-block torch.compile), ``fused_lora_kernels`` /
    ``fused_lora_modules`` (None on the baseline), ``world_size``, and -- once ``trainer`` has run a
    training step -- what the first step observed: ``autocast``, ``activation_dtype`` (the autocast
    dtype when autocast was on, else the dtype of the decoder's output) and ``final_hidden_dtype``
    (what the decoder hands the LM head).
    Without an observation ``activation_dtype`` is None: it is never guessed.
    """
    import sys

    from accelerate.utils import extract_model_from_parallel

    unwrapped = extract_model_from_parallel(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    config = getattr(base, "config", None)
    head = getattr(base, "lm_head", None)
    facts = {
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "lm_head_dtype": _dtype_name(getattr(getattr(head, "weight", None), "dtype", None)),
        "compile": False, "fused_lora_kernels": None, "fused_lora_modules": None,
        "world_size": int(trainer.args.world_size) if trainer is not None else int(os.environ.get("WORLD_SIZE", "1")),
        "autocast": None, "activation_dtype": None, "final_hidden_dtype": None,
    }
    fast = sys.modules.get("kitrec_fast.backends.unsloth_backend")
    if fast is not None:
        extras = fast.runtime_extras(unwrapped)
        facts.update({k: v for k, v in extras.items() if not (k == "attn_implementation" and v is None)})
    seen = getattr(trainer, "kitrec_observed", None) or {}
    if seen:
        facts["autocast"] = seen["autocast"]
        facts["activation_dtype"] = seen["autocast_dtype"] if seen["autocast"] else seen["hidden_dtype"]
        facts["final_hidden_dtype"] = seen["hidden_dtype"]
    return facts


def keep_4bit_layout_trainable(model) -> dict:
    """Stop bitsandbytes from switching a trained model's 4-bit weights to its CPU inference layout.

    On a CPU with AVX512-BF16, ``bnb.nn.Linear4bit.forward`` repacks the weight into a layout for
    its fused inference kernel the first time the layer runs in eval mode on an input without
    gradients (an evaluation), and keeps it. Every later forward, training included, then goes
    through ``gemv_4bit``, an op without an autograd formula: the gradient through the frozen base
    weights to their inputs is dropped, and training after the first evaluation follows wrong
    gradients without an error. Training never wants that layout: turn it off on every 4-bit layer
    and undo a repack already done. The hf engine's inference turns it off as well: the packed
    kernel computes in bf16, so generations on such a CPU would not be what training computed
    (nor what a CPU without AVX512-BF16 generates). Returns what the environment record keeps.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse, has_avx512bf16

    layers = unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        layers += 1
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
            unpacked += 1
    return {"cpu_avx512_bf16": bool(has_avx512bf16()), "layers": layers, "unpacked": unpacked}
