"""The smoke recipe trained through ``run_training`` on one kind of Unsloth trainer class (test helper).

    python tests/scripts/trainer_class.py KIND OUT [KEY=VALUE ...]   -> prints JSON, writes OUT/KIND.pt

KIND ``cpu``: the process a CPU run is today (Unsloth's CPU backend: ``trl.SFTTrainer`` is
unsloth_zoo's CPU subclass of TRL's). KIND ``generated``: ``trl.SFTTrainer`` is Unsloth's
generated ``UnslothSFTTrainer``, the class ``KitrecSFTTrainer`` subclasses on a GPU; see
:func:`patch_as_on_a_gpu`. Both load the model with Unsloth's CPU loader, so the trainer class is
the only difference.

One run of four optimizer steps (every step logged, an evaluation and a checkpoint every 2 steps),
then the same run resumed from its checkpoint-2 in a copy of the run directory. OUT/KIND.pt holds
the gradients the optimizer got at step 1.
"""

import json
import os
import shutil
import sys
from pathlib import Path


def patch_as_on_a_gpu() -> None:
    """Import unsloth and apply its TRL patches as its import does on a GPU, in that order.

    ``UNSLOTH_ALLOW_CPU=1`` loads Unsloth's GPU stack on a machine without one; there its import
    skips exactly the TRL patches (``PatchFastRL``, ``unsloth/models/rl.py``; the end of
    ``unsloth/_gpu_init.py``), so they are called here, Unsloth's own functions:
    ``PatchFastRL``'s steps for the SFT trainer (``patch_trl_rl_trainers`` generates every TRL
    trainer; only the SFT one matters here and each costs seconds), then ``_patch_trl_trainer``
    and ``patch_sft_trainer`` as ``_gpu_init`` runs them.

    Unsloth's GPU model loader does not run on CPU tensors without Triton's interpreter, so the
    backend loads with Unsloth's CPU loader (what a CPU run trains): same model, other trainer.
    """
    os.environ["UNSLOTH_ALLOW_CPU"] = "1"
    from kitrec_fast.backends import unsloth_backend  # imports unsloth first

    from unsloth.context_parallel import patch_sft_trainer
    from unsloth.models import rl
    from unsloth.models._trl_tool_templates import patch_trl_tool_chat_templates
    from unsloth.trainer import _patch_trl_trainer
    from unsloth_zoo.cpu import FastCPUModel

    rl.patch_trl_disable_gradient_checkpointing()
    rl.patch_trl_fused_lm_head_devices()
    rl.patch_trl_fused_lm_head_kernel()
    patch_trl_tool_chat_templates()
    rl._patch_trl_rl_trainers("sft_trainer")
    _patch_trl_trainer()
    patch_sft_trainer()
    unsloth_backend.FastLanguageModel = FastCPUModel
    # The generated __init__ picks fp16 autocast for an fp32 model where the device has no bf16
    # (a CPU); a GPU run's model is bf16 and keeps bf16. The comparison is at fp32 on both sides.
    os.environ["UNSLOTH_FORCE_FLOAT32"] = "1"


def main() -> None:
    kind, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if kind == "generated":
        patch_as_on_a_gpu()
    else:
        from kitrec_fast.backends import unsloth_backend  # noqa: F401
    import torch
    from transformers import TrainerCallback

    import kitrec_fast.train.trainer as trainer_module
    from kitrec_fast.artifacts import rundir
    from kitrec_fast.train import run as training
    from kitrec_fast.train.cli import build_parser, parse_run_args, resolve_config

    import trl

    base = trl.SFTTrainer
    first_grads: dict = {}

    class FirstGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if not first_grads:
                first_grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                    if p.grad is not None})

    make_trainer, made = trainer_module.make_trainer, []

    def observed(*args, **kwargs):  # the run's own trainer, with one observer added
        made.append(make_trainer(*args, **kwargs))
        made[-1].add_callback(FirstGradients())
        return made[-1]

    trainer_module.make_trainer = observed

    def train(run_dir: Path) -> None:
        argv = ["--smoke", "--backend", "unsloth", "--output-dir", str(run_dir), *overrides]
        cfg = resolve_config("dualft_music", parse_run_args(build_parser("trainer_class", False, ""), argv))
        result = training.run_training(cfg, command="trainer_class " + " ".join(argv))
        assert result.exit_code == 0, result

    run = out / kind
    train(run)
    resumed = out / f"{kind}-resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("checkpoint-4", "adapter", rundir.SUMMARY))
    train(resumed)
    torch.save(first_grads, out / f"{kind}.pt")
    adapter = {}
    if "model.load_in_4bit=false" in overrides:
        # The same trainer built on the recipe's 4-bit base (not trained): the trainable weights' dtypes.
        sys.path.insert(0, str(Path(__file__).parent))
        from smoke_trainer import build

        _, quantized = build("unsloth", [o for o in overrides if o != "model.load_in_4bit=false"], with_eval=False)
        adapter = {str(p.dtype) for p in quantized.model.parameters() if p.requires_grad}

    cls = type(made[0])
    rows = rundir.read_metrics(run)
    print(json.dumps({
        "kind": kind,
        "base": {"name": base.__name__, "module": base.__module__,
                 "file": getattr(sys.modules.get(base.__module__), "__file__", None)},
        "mro": [f"{c.__module__}.{c.__name__}" for c in cls.__mro__],
        "environment": json.loads((run / rundir.ENVIRONMENT).read_text()),
        "args": {k: getattr(made[0].args, k) for k in ("fp16", "bf16", "gradient_accumulation_steps",
                                                       "neftune_noise_alpha", "eval_accumulation_steps",
                                                       "per_device_eval_batch_size")},
        "train": [r for r in rows if "loss" in r],
        "eval": [r for r in rows if "eval_loss" in r],
        "resumed_train": [r for r in rundir.read_metrics(resumed) if "loss" in r],
        "resumed_attempts": rundir.read_attempts(resumed),
        "summary": json.loads((run / rundir.SUMMARY).read_text()),
        "checkpoints": {p.name: sorted(f.name for f in p.iterdir()) for p in sorted(run.glob("checkpoint-*"))},
        "adapter": sorted(f.name for f in (run / "adapter").iterdir()),
        "adapter_dtypes_4bit": sorted(adapter),
    }))


if __name__ == "__main__":
    main()
