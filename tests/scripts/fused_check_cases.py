"""Every fused-function case the tests read, in one process under Triton's interpreter (test helper).

    UNSLOTH_ALLOW_CPU=1 TRITON_INTERPRET=1 python tests/scripts/fused_check_cases.py   -> prints JSON

``fused_check.run("all")`` (the functions on one layer, the recipes' dropouts, 4-bit bases, a whole
step), then the same layer checks with realistic bugs planted in Unsloth's fused functions for this
process only: each must be caught; last, Unsloth's own LoRA patching of tiny bf16 Qwen3s vs the
backend's kernel counters (``counters``: patched modules only, nothing runs; after the checks above
because it stubs the check ``patch_peft_model`` makes on the Trainer).
"""

import contextlib
import json

from kitrec_fast.backends import fused_check  # noqa: E402

@contextlib.contextmanager
def planted(name: str, replacement):
    from unsloth.kernels import fast_lora

    original = getattr(fast_lora, name)
    setattr(fast_lora, name, replacement(original))
    try:
        yield
    finally:
        setattr(fast_lora, name, original)


def _alpha_not_alpha_over_r(get):  # scaling by alpha instead of alpha / r
    def wrapped(proj):
        W, Wq, A, B, S = get(proj)
        return W, Wq, A, B, S * fused_check.LORA_R
    return wrapped


def _dropped_kv_adapters(get):  # the K/V projections' adapters (the narrower GQA ones) add nothing
    def wrapped(proj):
        W, Wq, A, B, S = get(proj)
        return (W, Wq, A, B, 0.0) if proj.out_features < proj.in_features else (W, Wq, A, B, S)
    return wrapped


def _transposed_lora(get):  # A and B read in each other's layout (square projections: no shape error)
    def wrapped(proj):
        W, Wq, A, B, S = get(proj)
        return (W, Wq, B.t(), A.t(), S) if A is not None and A.shape[1] == B.shape[0] else (W, Wq, A, B, S)
    return wrapped


def _no_dropout_scale(forward):  # dropout without its 1 / (1 - p)
    def wrapped(X, p):
        Xd, mask = forward(X, p)
        return (Xd * (1 - p) if p else Xd), mask
    return wrapped


def _patch_unsloth_trainer_check() -> None:
    # patch_peft_model insists that Unsloth already replaced Trainer._inner_training_loop (its GPU
    # from_pretrained does); nothing trains here, so a same-named pass-through satisfies the check.
    from transformers.trainer import Trainer

    original = Trainer._inner_training_loop

    def _fast_inner_training_loop(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    Trainer._inner_training_loop = _fast_inner_training_loop


def patched_counts(layers: int, dropout: float, targets: list[str], dtype_name: str = "bfloat16") -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from unsloth.models.llama import FastLlamaModel

    from kitrec_fast.backends import unsloth_backend
    from kitrec_fast.testkit.tiny_model import build_tiny_qwen3

    model = build_tiny_qwen3(num_layers=layers).to(getattr(torch, dtype_name))
    model.max_seq_length = 256
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    model = FastLlamaModel.patch_peft_model(model, use_gradient_checkpointing=False)
    return {"layers": layers, "dropout": dropout, "targets": targets, "dtype": dtype_name,
            "kernels": unsloth_backend.count_fused_lora_kernels(model),
            "modules": unsloth_backend.count_fused_lora_modules(model), "facts": unsloth_backend.runtime_extras(model)}


def counters() -> dict:
    _patch_unsloth_trainer_check()
    from unsloth.kernels import fast_lora

    every = list(fused_check.TARGETS)  # all seven projections, attention's four first
    cases = [patched_counts(3, 0.08, every), patched_counts(2, 0.15, every), patched_counts(2, 0.0, every[:4]),
             patched_counts(2, 0.0, every, "float32")]
    return {"fused_lora_dropout": bool(fast_lora.FUSED_LORA_DROPOUT), "cases": cases}


def main() -> None:
    out = fused_check.run("all")
    plants = {}
    for label, name, repl, dropout, names in (
            ("alpha_not_alpha_over_r", "get_lora_parameters", _alpha_not_alpha_over_r, 0.0, ("qkv", "o", "mlp")),
            ("dropped_kv_adapters", "get_lora_parameters", _dropped_kv_adapters, 0.0, ("qkv",)),
            ("transposed_lora", "get_lora_parameters", _transposed_lora, 0.0, ("o",)),
            ("no_dropout_scale_0.08", "_dropout_forward", _no_dropout_scale, 0.08, ("qkv", "o", "mlp")),
            ("no_dropout_scale_0.15", "_dropout_forward", _no_dropout_scale, 0.15, ("qkv", "o", "mlp"))):
        with planted(name, repl):
            plants[label] = fused_check.check_layer("cpu", "float32", dropout=dropout, names=names)
    out["plants"] = plants
    out["counters"] = counters()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
