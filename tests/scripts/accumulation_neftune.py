"""Two Trainer-level checks through the project's trainer, in one process per backend (test helper).

    python tests/scripts/accumulation_neftune.py BACKEND [KEY=VALUE ...]   -> prints JSON

* accumulation: one optimizer step over 4 rows as 4 micro-batches of 1 (accumulation 4) and as
  one micro-batch of 4 (the full-batch reference); the gradients handed to the optimizer must be
  the same (the loss is normalised over the tokens of the whole accumulated batch, once).
* NEFTune: the input embeddings seen in a training step carry uniform noise of magnitude
  alpha / sqrt(seq_len * hidden); those seen in the evaluation carry none.
"""

import json
import sys

from smoke_trainer import build
from transformers import TrainerCallback

COMMON = ["data.val_fraction=0", "data.limit=4", "train.max_steps=1", "train.warmup_ratio=0",
          "train.neftune_alpha=null", "lora.dropout=0", "train.max_grad_norm=1e9", "train.group_by_length=false"]


class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def accumulated_grads(backend: str, extra: list[str], per_device: int, accumulation: int) -> tuple[dict, float]:
    _, trainer = build(backend, [*COMMON, *extra, f"train.per_device_batch_size={per_device}",
                                 f"train.gradient_accumulation_steps={accumulation}"], with_eval=False)
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    loss = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
    return capture.grads, loss


def neftune(backend: str, extra: list[str]) -> dict:
    import torch

    _, trainer = build(backend, ["data.limit=24", "data.val_fraction=0.25", "train.max_steps=1",
                                 "train.eval_steps=1", "train.save_steps=1", "train.gradient_accumulation_steps=1",
                                 "train.neftune_alpha=5", "train.early_stopping_patience=0", *extra])
    seen = []

    class Hook(TrainerCallback):
        # registered once training began, i.e. after the Trainer's own NEFTune hook: sees its output
        def on_train_begin(self, args, state, control, model=None, **kw):
            emb = model.get_input_embeddings()

            def record(module, inputs, output):
                clean = torch.nn.functional.embedding(inputs[0], module.weight)
                noise = (output.detach().float() - clean.detach().float()).abs().max()
                seen.append({"training": module.training, "shape": list(output.shape), "max_noise": float(noise)})

            emb.register_forward_hook(record)

    trainer.add_callback(Hook())
    trainer.train()
    alpha = trainer.args.neftune_noise_alpha
    train_calls = [s for s in seen if s["training"]]
    eval_calls = [s for s in seen if not s["training"]]
    bounds = [alpha / (s["shape"][1] * s["shape"][2]) ** 0.5 for s in train_calls]
    return {"alpha": alpha, "train_calls": len(train_calls), "eval_calls": len(eval_calls),
            "train_noise_over_bound": [s["max_noise"] / b for s, b in zip(train_calls, bounds)],
            "eval_max_noise": max((s["max_noise"] for s in eval_calls), default=None)}


def main() -> None:
    backend, extra = sys.argv[1], sys.argv[2:]
    g_acc, loss_acc = accumulated_grads(backend, extra, per_device=1, accumulation=4)
    g_ref, loss_ref = accumulated_grads(backend, extra, per_device=4, accumulation=1)
    import torch

    # over all trainable parameters at once (LoRA A starts with a zero gradient: B is zero at init)
    acc, ref = (torch.cat([g[n].flatten().float() for n in sorted(g_ref)]) for g in (g_acc, g_ref))
    rel, ratio = float((acc - ref).norm() / ref.norm()), float(acc.norm() / ref.norm())
    print(json.dumps({"n_grads": len(g_ref), "same_keys": sorted(g_acc) == sorted(g_ref),
                      "max_rel_grad_diff": rel, "grad_norm_ratio": ratio, "loss_accumulated": loss_acc,
                      "loss_full_batch": loss_ref, "neftune": neftune(backend, extra)}))


if __name__ == "__main__":
    main()
