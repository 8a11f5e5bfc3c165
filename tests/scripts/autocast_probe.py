"""One real training step of the project's trainer with CPU bf16 autocast on an fp32-weight tiny model.

    python tests/scripts/autocast_probe.py BACKEND [KEY=VALUE ...]   -> prints JSON

Records, from inside the step's compute_loss: whether autocast was on when a decoder layer ran,
and the dtype a LoRA matmul produced. Each backend runs in its own process (tests/scripts/trainer_checks.py
calls :func:`probe` beside the other trainer checks).
"""

import json
import sys

from smoke_trainer import build


def probe(backend: str, rest: list[str]) -> dict:
    if rest[:1] == ["--gpu"]:
        # the recipe as it runs on a GPU (4-bit, the trainer's own bf16 choice)
        cfg, trainer = build(backend, ["train.max_steps=1", *rest[1:]], with_eval=False)
    else:
        # fp32 weights (no 4-bit): the LoRA matrices are fp32, so only autocast can make their matmuls bf16.
        cfg, trainer = build(backend, ["model.load_in_4bit=false", "train.max_steps=1", "train.neftune_alpha=null",
                                       *rest], with_eval=False, extra_args={"use_cpu": True, "bf16": True})
    import torch

    from kitrec_fast.backends import runtime_facts
    from kitrec_fast.train.trainer import _decoder_and_head

    model = trainer.model
    decoder, _ = _decoder_and_head(model)
    lora_a = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj.lora_A.default"))
    seen: dict = {"layer_autocast": [], "lora_out": [], "in_compute_loss": []}
    state = {"in_loss": False}

    def layer_hook(module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output  # Unsloth's layers return tuples
        seen["layer_autocast"].append(torch.is_autocast_enabled(hidden.device.type))
        seen["in_compute_loss"].append(state["in_loss"])

    def lora_hook(module, args, output):
        seen["lora_out"].append(str(output.dtype).replace("torch.", ""))

    original = trainer.compute_loss

    def compute_loss(*a, **k):
        state["in_loss"] = True
        try:
            return original(*a, **k)
        finally:
            state["in_loss"] = False

    trainer.compute_loss = compute_loss
    decoder.layers[0].register_forward_hook(layer_hook)
    lora_a.register_forward_hook(lora_hook)
    trainer.train()
    return {**seen, "bf16": bool(trainer.args.bf16), "lora_weight": str(lora_a.weight.dtype).replace("torch.", ""),
            "loss_path": trainer.kitrec_loss_path, "steps": trainer.state.global_step,
            "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
            "facts": runtime_facts(model, trainer), "num_layers": len(decoder.layers), "lora_dropout": cfg.lora.dropout}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2:])))
