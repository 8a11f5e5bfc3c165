"""The trainer-level checks of tests/test_train.py, in ONE process per backend (test helper).

    python tests/scripts/trainer_checks.py BACKEND [KEY=VALUE ...]   -> prints JSON

Every check builds its own trainer from the smoke recipe (smoke_trainer.build) with its own
overrides on top of the given ones; one process runs them all because each process costs ~20 s of
imports and tokenizer load on 2 cores before its first check. The process imports unsloth (BACKEND
unsloth) or never does (peft), as a training run does.

* ``batches``: digests of the first training batches (the two backends must see the same ones);
* ``loss``, ``loss_eps0``: one training-mode loss and its LoRA gradients through the trainer vs full
  logits + ``torch.nn.functional.cross_entropy``, with the recipe's label smoothing and (unsloth: its
  own loss then) without;
* ``accumulation``: one optimizer step over 4 rows as 4 micro-batches of 1 (accumulation 4) and as
  one micro-batch of 4; the gradients handed to the optimizer must be the same (the loss is
  normalised over the tokens of the whole accumulated batch, once);
* ``neftune``: the input embeddings seen in a training step carry uniform noise of magnitude
  alpha / sqrt(seq_len * hidden); those seen in the evaluation carry none;
* ``autocast``: tests/scripts/autocast_probe.py's probe (CPU bf16 autocast on fp32 weights);
* ``accumulation_order`` (peft): the LoRA gradient of one optimizer step of 4 one-row micro-batches
  summed in two orders, all 4 in one process (a single run) and two halves summed afterwards (two
  data-parallel ranks and their all-reduce), in the trainer's own LoRA dtype and again in float32.
"""

import hashlib
import json
import sys

from smoke_trainer import build
from transformers import TrainerCallback

NO_NOISE = ["train.neftune_alpha=null", "lora.dropout=0"]


def batches(backend: str, fast: list[str], n: int = 3) -> list[dict]:
    """Per batch: sha1 of input_ids and of labels, the shape and the count of trained labels."""
    _, trainer = build(backend, fast)
    out = []
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i == n:
            break
        out.append({"shape": list(batch["input_ids"].shape), "trained": int((batch["labels"] != -100).sum()),
                    **{k: hashlib.sha1(batch[k].numpy().tobytes()).hexdigest() for k in ("input_ids", "labels")}})
    return out


def loss_parity(backend: str, overrides: list[str]) -> dict:
    import torch.nn.functional as F

    cfg, trainer = build(backend, overrides, with_eval=False)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    ours = trainer.compute_loss(model, dict(batch))
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                          ignore_index=-100, label_smoothing=cfg.train.label_smoothing)
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    max_rel = max(float((g_ours[n] - g_ref[n]).norm() / (g_ref[n].norm() + 1e-12)) for n in g_ref)
    return {"ours": float(ours), "reference": float(ref), "eps": cfg.train.label_smoothing, "n_grads": len(g_ref),
            "same_grad_keys": sorted(g_ours) == sorted(g_ref), "max_rel_grad_diff": max_rel,
            "loss_path": trainer.kitrec_loss_path}


ACCUMULATION = ["data.val_fraction=0", "data.limit=4", "train.max_steps=1", "train.warmup_ratio=0",
                "train.neftune_alpha=null", "lora.dropout=0", "train.max_grad_norm=1e9", "train.group_by_length=false"]


class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def accumulated_grads(backend: str, extra: list[str], per_device: int, accumulation: int) -> tuple[dict, float]:
    _, trainer = build(backend, [*ACCUMULATION, *extra, f"train.per_device_batch_size={per_device}",
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


def accumulation(backend: str, extra: list[str]) -> dict:
    import torch

    g_acc, loss_acc = accumulated_grads(backend, extra, per_device=1, accumulation=4)
    g_ref, loss_ref = accumulated_grads(backend, extra, per_device=4, accumulation=1)
    # over all trainable parameters at once (LoRA A starts with a zero gradient: B is zero at init)
    acc, ref = (torch.cat([g[n].flatten().float() for n in sorted(g_ref)]) for g in (g_acc, g_ref))
    return {"n_grads": len(g_ref), "same_keys": sorted(g_acc) == sorted(g_ref),
            "max_rel_grad_diff": float((acc - ref).norm() / ref.norm()), "grad_norm_ratio": float(acc.norm() / ref.norm()),
            "loss_accumulated": loss_acc, "loss_full_batch": loss_ref}


def accumulation_order(fast: list[str]) -> dict:
    import torch

    _, trainer = build("peft", [*fast, "data.limit=8", *NO_NOISE, "train.per_device_batch_size=1"], with_eval=False)
    model = trainer.model
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trained_dtype = str(named[0][1].dtype).replace("torch.", "")
    collate = trainer.data_collator
    rows = [collate([trainer.train_dataset[i]]) for i in range(4)]
    n_items = torch.tensor(sum(int((r["labels"][..., 1:] != -100).sum()) for r in rows))

    def accumulate(batches) -> list:
        model.zero_grad(set_to_none=True)
        for batch in batches:
            trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items).backward()
        return [p.grad.detach().clone() for _, p in named]

    def orders() -> dict:
        one = accumulate(rows)  # one process: 4 micro-batches into the same .grad
        rank0, rank1 = accumulate(rows[0::2]), accumulate(rows[1::2])  # 2 ranks, 2 micro-batches each
        reduced = [a + b for a, b in zip(rank0, rank1)]  # the all-reduce, in the gradients' dtype
        rel = [float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(reduced, one)
               if b.float().norm() > 0]
        return {"worst": max(rel), "median": sorted(rel)[len(rel) // 2], "dtype": str(one[0].dtype)}

    out = {"trained_dtype": trained_dtype, "trained": orders()}
    for _, p in named:
        p.data = p.data.float()
    out["float32"] = orders()
    return out


def main() -> None:
    from autocast_probe import probe

    backend, fast = sys.argv[1], sys.argv[2:]
    out = {"batches": batches(backend, fast)}
    out["unsloth_imported"] = "unsloth" in sys.modules
    out["loss"] = loss_parity(backend, [*fast, "data.limit=4", *NO_NOISE])
    if backend == "unsloth":  # without smoothing the fast path switches to the model's own loss
        out["loss_eps0"] = loss_parity(backend, [*fast, "data.limit=4", *NO_NOISE, "train.label_smoothing=0"])
    out["accumulation"] = accumulation(backend, fast[1:])
    out["neftune"] = neftune(backend, fast[1:])
    out["autocast"] = probe(backend, [*fast, "data.limit=4"])
    if backend == "peft":  # the trainer's LoRA dtype on a 4-bit base (bf16) is TRL's, as in a baseline run
        out["accumulation_order"] = accumulation_order(fast)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
