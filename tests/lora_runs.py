"""A run directory as training leaves it, without training: resolved_config.yaml + a random LoRA adapter."""

from __future__ import annotations

from pathlib import Path


def make_lora_run(run: Path, command: str) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kitrec_fast.artifacts.rundir import write_resolved_config
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.config import config_from_dict

    run.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict({
        "recipe": "test", "backend": "peft",
        # fp32 weights (no 4-bit): CPU-fast and bit-identical between the two backends' loaders.
        "model": {"name": "testkit:tiny-qwen3", "load_in_4bit": False, "compute_dtype": "auto"},
        # 8 rows, half held out: one validation row per user type; short rows keep CPU forwards fast.
        "data": {"dataset": "embedded:dualft_music", "tokenizer": "offline:qwen3", "max_length": 2048,
                 "max_candidates": 20, "min_candidates": 10, "limit": 8, "val_fraction": 0.5},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"label_smoothing": 0.1, "per_device_batch_size": 2}})
    write_resolved_config(run, cfg, command)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.name))
    # init_lora_weights=False: random A and B, so the adapter changes the outputs and code that
    # silently ignored it would give different numbers than code that loads it.
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))
    model.save_pretrained(str(run / "adapter"))
    return run
