"""One training-mode loss through the project's trainer vs full logits + torch cross_entropy (test helper).

    python tests/scripts/loss_parity.py BACKEND [KEY=VALUE ...]   -> prints JSON
"""

import json
import sys

from smoke_trainer import build


def main() -> None:
    import torch.nn.functional as F

    cfg, trainer = build(sys.argv[1], sys.argv[2:], with_eval=False)
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
    print(json.dumps({"ours": float(ours), "reference": float(ref), "eps": cfg.train.label_smoothing,
                      "n_grads": len(g_ref), "same_grad_keys": sorted(g_ours) == sorted(g_ref),
                      "max_rel_grad_diff": max_rel, "loss_path": trainer.kitrec_loss_path}))


if __name__ == "__main__":
    main()
