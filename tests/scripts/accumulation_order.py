"""The LoRA gradient of one optimizer step of 4 one-row micro-batches, summed in two orders: one
process accumulating all 4 (what a single run does), and two halves summed afterwards (what two
data-parallel ranks and their all-reduce do). Run for the trainer's own LoRA dtype and again with the
LoRA weights in float32; prints JSON.

    python tests/scripts/accumulation_order.py [KEY=VALUE ...]
"""

import json
import sys

from smoke_trainer import build


def main() -> None:
    import torch

    cfg, trainer = build("peft", ["train.neftune_alpha=null", "lora.dropout=0", "train.per_device_batch_size=1",
                                  *sys.argv[1:]], with_eval=False)
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
    print(json.dumps(out))


if __name__ == "__main__":
    main()
