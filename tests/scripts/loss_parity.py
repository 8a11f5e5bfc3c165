"""One training-mode loss through the project's trainer vs full logits + torch cross_entropy (test helper).

    python tests/scripts/loss_parity.py BACKEND [KEY=VALUE ...]   -> prints JSON
"""

import json
import sys


def main() -> None:
    backend = sys.argv[1]
    from kitrec_fast.backends import get_backend

    mod = get_backend(backend)
    import argparse
    import tempfile

    import torch
    import torch.nn.functional as F

    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.recipes._main import add_run_arguments, resolve_config
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.trainer import make_trainer

    p = argparse.ArgumentParser()
    add_run_arguments(p)
    args = p.parse_args(["--smoke", "--backend", backend, *sys.argv[2:]])
    cfg = resolve_config("dualft_music", args)
    tok = load_tokenizer(cfg.data.tokenizer)
    data = prepare(cfg.data, tok)
    model = mod.load_model(cfg).model
    trainer = make_trainer(cfg, model, tok, data.train, None, tempfile.mkdtemp(), [])
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
