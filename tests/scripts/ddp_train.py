"""The recipe command (``python -m kitrec_fast.recipes.dualft_music ARGS``) run unchanged, after which
every rank saves the trainable parameters it ended with to ``OUT/rank{RANK}.safetensors``: the run
directory only holds rank 0's adapter, and data parallelism must leave every rank with the same one.

    torchrun --standalone --nproc_per_node 2 tests/scripts/ddp_train.py OUT ARGS...
"""

import os
import sys
from pathlib import Path


def main() -> int:
    from safetensors.torch import save_file

    import kitrec_fast.train.trainer as trainer_module
    from kitrec_fast.recipes._main import main as recipe_main

    out, argv = Path(sys.argv[1]), sys.argv[2:]
    made = []
    make_trainer = trainer_module.make_trainer

    def keep(*args, **kwargs):  # the real trainer, remembered so its model can be read afterwards
        made.append(make_trainer(*args, **kwargs))
        return made[-1]

    trainer_module.make_trainer = keep
    code = recipe_main("dualft_music", argv)
    if code == 0:
        model = made[-1].model
        params = {name: p.detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}
        out.mkdir(parents=True, exist_ok=True)
        save_file(params, str(out / f"rank{os.environ.get('RANK', '0')}.safetensors"))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
