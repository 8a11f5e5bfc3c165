"""Print the first training batches a backend's trainer would see, as JSON (test helper).

    python tests/scripts/batch_digest.py BACKEND N_BATCHES [KEY=VALUE ...]

Runs the real smoke configuration up to the trainer's dataloader, in its own process, so the
unsloth process and the peft process each get their own patched or unpatched libraries.
"""

import json
import sys

from smoke_trainer import build


def main() -> None:
    backend, n = sys.argv[1], int(sys.argv[2])
    _, trainer = build(backend, sys.argv[3:])
    batches = []
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i == n:
            break
        batches.append({k: v.tolist() for k, v in batch.items()})
    print(json.dumps({"unsloth_imported": "unsloth" in sys.modules, "batches": batches,
                      "loss_path": trainer.kitrec_loss_path}))


if __name__ == "__main__":
    main()
