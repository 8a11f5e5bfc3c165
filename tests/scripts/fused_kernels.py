"""Unsloth's own LoRA patching of tiny bf16 Qwen3s on CPU vs the backend's counters (test helper).

    UNSLOTH_ALLOW_CPU=1 python tests/scripts/fused_kernels.py   -> prints JSON

UNSLOTH_ALLOW_CPU=1 (a test switch: never on a real run) loads Unsloth's GPU model stack on a
machine without one, so ``FastLlamaModel.patch_peft_model`` installs its fused kernels on the
modules; nothing here runs them.
"""

import json
import os

os.environ["UNSLOTH_ALLOW_CPU"] = "1"

from kitrec_fast.backends import unsloth_backend as ub  # noqa: E402  (imports unsloth first)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _patch_unsloth_trainer_check() -> None:
    # patch_peft_model insists that Unsloth already replaced Trainer._inner_training_loop (its GPU
    # from_pretrained does); nothing trains here, so a same-named pass-through satisfies the check.
    from transformers.trainer import Trainer

    original = Trainer._inner_training_loop

    def _fast_inner_training_loop(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    Trainer._inner_training_loop = _fast_inner_training_loop


def patched(layers: int, dropout: float, targets: list[str], dtype_name: str = "bfloat16") -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from unsloth.models.llama import FastLlamaModel

    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    model = build_tiny_qwen3(num_layers=layers).to(getattr(torch, dtype_name))
    model.max_seq_length = 256
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    model = FastLlamaModel.patch_peft_model(model, use_gradient_checkpointing=False)
    return {"layers": layers, "dropout": dropout, "targets": targets, "dtype": dtype_name,
            "kernels": ub.count_fused_lora_kernels(model), "modules": ub.count_fused_lora_modules(model),
            "facts": ub.runtime_extras(model)}


def main() -> None:
    _patch_unsloth_trainer_check()
    from unsloth.kernels import fast_lora

    cases = [patched(3, 0.08, ALL), patched(2, 0.15, ALL), patched(2, 0.0, ALL[:4]),
             patched(2, 0.0, ALL, "float32")]
    print(json.dumps({"fused_lora_dropout": bool(fast_lora.FUSED_LORA_DROPOUT), "cases": cases}))


if __name__ == "__main__":
    main()
