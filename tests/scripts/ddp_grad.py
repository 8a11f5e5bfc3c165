"""Two CPU ranks (gloo) take one training step of the project's trainer on one row each; rank 0 compares
the DDP-synchronised LoRA gradients with the gradient of the whole two-row batch in one process.

    torchrun --nproc_per_node 2 tests/scripts/ddp_grad.py [KEY=VALUE ...]   -> rank 0 prints JSON
"""

import json
import os
import sys

from smoke_trainer import build


def main() -> None:
    import torch

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # A global batch of 2 rows: one micro-batch of 1 row on each rank.
    cfg, trainer = build("peft", ["model.load_in_4bit=false", "train.neftune_alpha=null", "lora.dropout=0",
                                  "train.per_device_batch_size=1", "train.gradient_accumulation_steps=2",
                                  "train.max_steps=1", *sys.argv[1:]],
                         with_eval=False, extra_args={"use_cpu": True, "ddp_backend": "gloo"})
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(2)]
    collate = trainer.data_collator
    local = collate([rows[rank]])
    both = collate(rows)
    # What the Trainer passes: trained tokens of the step gathered over all ranks.
    n_items = torch.tensor(sum(int((collate([r])["labels"][..., 1:] != -100).sum()) for r in rows))

    model = trainer.accelerator.prepare(trainer.model)  # DistributedDataParallel on world > 1
    model.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.training_step(model, local, num_items_in_batch=n_items)
    synced = [p.grad.detach().clone() for p in params]

    # reference: the two-row batch in this process, mean over all its trained tokens
    ref_loss = trainer.compute_loss(trainer.model, dict(both))
    ref = torch.autograd.grad(ref_loss, params)
    if rank == 0:
        rel = max(float((a - b).norm() / (b.norm() + 1e-30)) for a, b in zip(synced, ref))
        ratio = float(sum((a * b).sum() for a, b in zip(synced, ref)) / sum((b * b).sum() for b in ref))
        print(json.dumps({"world_size": world, "ddp": type(model).__name__, "max_rel_grad_diff": rel,
                          "grad_ratio": ratio, "n_items": int(n_items), "params": len(params),
                          "loss_path": trainer.kitrec_loss_path}))


if __name__ == "__main__":
    main()
