"""The fast path: Unsloth ``FastLanguageModel`` in 4-bit with its fused LoRA kernels.

This is the only module of the project that imports unsloth. Importing it patches transformers
and trl globally, so it must be imported before them and never in a baseline process.
"""

from __future__ import annotations

import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

import unsloth  # noqa: E402,F401  (must precede transformers/trl/peft)
from unsloth import FastLanguageModel  # noqa: E402

from kitrec_fast.backends.common import (  # noqa: E402
    LoadedModel, gradient_checkpointing_mode, resolve_dtype, resolve_model_path)

NAME = "unsloth"
UNSLOTH_VERSION = getattr(unsloth, "__version__", "?")


def count_fused_lora_modules(model) -> int:
    """Modules running Unsloth's fused LoRA autograd kernels (QKV, O and MLP per layer).

    Unsloth installs them only on a real GPU: its CPU fallback keeps peft's forwards, so this is 0
    on CPU and 3 x num_layers on a GPU when dropout/bias allow fusing.
    """
    try:
        from unsloth.models.llama import _fused_lora_modules

        return len(_fused_lora_modules(model))
    except ImportError:  # private helper moved: count the patched forwards ourselves
        from unsloth.kernels import apply_lora_mlp_swiglu, apply_lora_o, apply_lora_qkv

        n = 0
        for module in model.modules():
            if getattr(module, "apply_qkv", None) is apply_lora_qkv or getattr(module, "apply_o", None) is apply_lora_o:
                n += 1
            elif getattr(module.__dict__.get("forward"), "__func__", None) is apply_lora_mlp_swiglu:
                n += 1
        return n


def _from_pretrained(cfg, max_seq_length: int):
    """The 4-bit base model per the recipe: ``(model, path, compute dtype, weights actually loaded)``."""
    import torch

    path = resolve_model_path(cfg.model.name)
    dtype = resolve_dtype(cfg.model.compute_dtype)
    resolved: list[str] = []
    # Unsloth's CPU fallback passes unknown keywords on to the model class; only its GPU loader
    # reports the checkpoint it resolved to.
    extra = {"on_model_resolved": resolved.append} if torch.cuda.is_available() else {}
    model, _ = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=cfg.model.load_in_4bit,
        # "exact" keeps the named checkpoint (quantized to nf4 on load) instead of Unsloth's
        # silent remap to its pre-quantized dynamic copy, so both backends load the same weights.
        use_exact_model_name=cfg.model.weights == "exact",
        revision=cfg.model.revision,
        random_state=cfg.train.seed,
        **extra,
    )
    return model, path, dtype, resolved[-1] if resolved else path


def load_model(cfg) -> LoadedModel:
    model, _, dtype, weights = _from_pretrained(cfg, cfg.data.max_length)
    mode = gradient_checkpointing_mode(cfg.train.gradient_checkpointing, NAME)
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        target_modules=list(cfg.lora.target_modules),
        use_gradient_checkpointing={"unsloth": "unsloth", "standard": True, "off": False}[mode],
        random_state=cfg.train.seed,
        max_seq_length=cfg.data.max_length,
    )
    fused = count_fused_lora_modules(model)
    quant = getattr(model.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    return LoadedModel(
        model=model,
        backend=NAME,
        requested=cfg.model.name,
        weights=weights,
        compute_dtype=str(dtype).replace("torch.", ""),
        fused_lora_modules=fused,
        notes={"unsloth_version": UNSLOTH_VERSION, "gradient_checkpointing": mode,
               "quantization_config": quant, "num_layers": model.config.num_hidden_layers},
    )


def load_for_inference(cfg, adapter_dir: str | None, max_seq_length: int | None = None):
    """The 4-bit base model as in ``load_model`` with a trained adapter, in Unsloth's inference mode.

    ``for_inference`` switches Unsloth to its fast generation path (fused attention/KV-cache
    kernels, no gradient checkpointing). ``max_seq_length`` should cover prompt + new tokens
    (evaluation prompts plus 2,048 generated tokens can exceed the training ``data.max_length``);
    default: the training length. ``adapter_dir=None`` gives the bare base model.
    """
    model = _from_pretrained(cfg, max(max_seq_length or 0, cfg.data.max_length))[0]
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    FastLanguageModel.for_inference(model)
    return model
