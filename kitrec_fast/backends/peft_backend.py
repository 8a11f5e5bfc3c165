"""The baseline: plain transformers + bitsandbytes 4-bit + PEFT LoRA, as the original KitREC run.

This is the only module that sets up the baseline's bitsandbytes quantization. It never imports
unsloth; a process that imports it must not have imported unsloth either (checked below).
"""

from __future__ import annotations

import sys

from kitrec_fast.backends.common import (
    MODEL_OPTION, LoadedModel, device_map, gradient_checkpointing_mode, resolve_dtype, resolve_model_path)
from kitrec_fast.hub import hub_errors, require_hub

NAME = "peft"


def _assert_unpatched() -> None:
    if "unsloth" in sys.modules:
        raise RuntimeError(
            "the peft baseline must run in a process that never imported unsloth (it patches transformers "
            "and trl globally); run `--backend peft` in its own process")


def _load_base(cfg):
    """The base model, 4-bit per the recipe: ``(model, path, compute dtype, BitsAndBytesConfig | None)``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(cfg.model.name)
    dtype = resolve_dtype(cfg.model.compute_dtype)
    quant = None
    if cfg.model.load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.model.quant_type,
            bnb_4bit_use_double_quant=cfg.model.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    require_hub(path, "model", MODEL_OPTION)
    with hub_errors(path, "model", MODEL_OPTION):
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quant,
            dtype=dtype,
            attn_implementation=cfg.model.attn_implementation,
            revision=cfg.model.revision,
            device_map=device_map(),
        )
    return model, path, dtype, quant


def load_model(cfg) -> LoadedModel:
    _assert_unpatched()
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, path, dtype, quant = _load_base(cfg)
    mode = gradient_checkpointing_mode(cfg.train.gradient_checkpointing, NAME)
    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=mode != "off",
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif mode != "off":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(cfg.train.seed)
    model = get_peft_model(model, lora)
    return LoadedModel(
        model=model,
        backend=NAME,
        requested=cfg.model.name,
        weights=path,
        compute_dtype=str(dtype).replace("torch.", ""),
        fused_lora_modules=None,
        notes={"gradient_checkpointing": mode, "attn_implementation": cfg.model.attn_implementation,
               "quantization_config": quant.to_dict() if quant is not None else None,
               "num_layers": model.config.num_hidden_layers},
    )


def load_for_inference(cfg, adapter_dir: str | None, max_seq_length: int | None = None):
    """The 4-bit base model as in ``load_model`` with a trained adapter loaded (not a fresh one).

    No ``prepare_model_for_kbit_training`` and no gradient checkpointing: those are training
    settings (fp32 upcasts, recomputation) that only slow generation down. ``adapter_dir=None``
    gives the bare base model (a zero-shot baseline). ``max_seq_length`` is accepted for symmetry
    with the Unsloth backend; transformers sizes its KV cache per call.
    """
    _assert_unpatched()
    model = _load_base(cfg)[0]
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.config.use_cache = True
    model.eval()
    if cfg.model.load_in_4bit:  # generate what training computed (see keep_4bit_layout_trainable)
        from kitrec_fast.backends.common import keep_4bit_layout_trainable

        keep_4bit_layout_trainable(model)
    return model
