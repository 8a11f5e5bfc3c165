"""What the Trainer is really given, for every shipped recipe (test helper; prints JSON).

    python tests/scripts/trainer_args.py

* ``sft``: per recipe, the SFTConfig fields built from it (mixed precision off: CPU cannot check bf16);
* ``dualft_steps``: the optimizer steps the Trainer plans for DualFT's 10,800 training rows
  (the real recipe's batch, accumulation and epochs; tiny model, 3-token rows, nothing trained).

A separate process: trl must not be imported into the test process (unsloth patches it on import).
"""

import json
import tempfile

FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
          "warmup_steps", "weight_decay", "num_train_epochs", "max_steps", "optim", "max_grad_norm",
          "label_smoothing_factor", "neftune_noise_alpha", "eval_strategy", "eval_steps", "save_steps",
          "save_total_limit", "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "seed",
          "data_seed", "bf16", "fp16")


class _Planned(Exception):
    pass


def planned_steps(cfg, rows: int) -> int:
    import datasets
    from transformers import TrainerCallback

    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.trainer import make_trainer
    from transformers import AutoModelForCausalLM

    seen = {}

    class Stop(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen["max_steps"] = state.max_steps
            raise _Planned

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * rows, "labels": [[-100, 2, 3]] * rows,
                                     "length": [3] * rows})
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("testkit:tiny-qwen3"))
    trainer = make_trainer(cfg, model, load_tokenizer("offline:qwen3"), ds, None, tempfile.mkdtemp(), [Stop()])
    try:
        trainer.train()
    except _Planned:
        pass
    return seen["max_steps"]


def main() -> None:
    from kitrec_fast.config import config_from_dict
    from kitrec_fast.recipes import list_recipes, load_recipe
    from kitrec_fast.train.trainer import build_sft_config, loss_path

    out = {"sft": {}}
    for name in list_recipes():
        cfg = config_from_dict(load_recipe(name))
        args = build_sft_config(cfg, tempfile.mkdtemp(), has_eval=True, bf16=False, fp16=False)
        out["sft"][name] = {f: getattr(args, f) for f in FIELDS}
        out["sft"][name]["loss_path"] = loss_path(cfg, on_cuda=True)
        out["sft"][name]["loss_label_smoothing"] = cfg.train.label_smoothing
    cfg = config_from_dict(load_recipe("dualft_music_seta"))
    out["dualft_steps"] = planned_steps(cfg, 10_800)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
