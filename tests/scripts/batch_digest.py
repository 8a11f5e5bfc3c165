"""Print the first training batches a backend's trainer would see, as JSON (test helper).

    python tests/scripts/batch_digest.py BACKEND N_BATCHES [KEY=VALUE ...]

Runs the real smoke configuration up to the trainer's dataloader, in its own process, so the
unsloth process and the peft process each get their own patched or unpatched libraries.
"""

import json
import sys


def main() -> None:
    backend, n = sys.argv[1], int(sys.argv[2])
    from kitrec_fast.backends import get_backend

    mod = get_backend(backend)  # first: unsloth must patch before transformers/trl load
    import argparse

    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.recipes._main import add_run_arguments, resolve_config
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.trainer import make_trainer

    p = argparse.ArgumentParser()
    add_run_arguments(p)
    args = p.parse_args(["--smoke", "--backend", backend, *sys.argv[3:]])
    cfg = resolve_config("dualft_music", args)
    tok = load_tokenizer(cfg.data.tokenizer)
    data = prepare(cfg.data, tok)
    loaded = mod.load_model(cfg)
    import tempfile

    trainer = make_trainer(cfg, loaded.model, tok, data.train, data.validation, tempfile.mkdtemp(), [])
    batches = []
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i == n:
            break
        batches.append({k: v.tolist() for k, v in batch.items()})
    print(json.dumps({"unsloth_imported": "unsloth" in sys.modules, "batches": batches,
                      "loss_path": trainer.kitrec_loss_path}))


if __name__ == "__main__":
    main()
