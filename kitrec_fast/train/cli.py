"""``kitrec-fast train RECIPE``, ``kitrec-fast recipes`` and ``kitrec-fast quickstart``."""

from __future__ import annotations

import shlex


def add_parser(sub) -> None:
    from kitrec_fast.recipes._main import add_run_arguments

    p = sub.add_parser("train", help="Train a recipe (name, family + --set, or a YAML path).")
    p.add_argument("recipe", help="e.g. dualft_music, dualft_music_setb, or path/to/recipe.yaml")
    add_run_arguments(p)
    p.set_defaults(func=_train)

    r = sub.add_parser("recipes", help="List the shipped recipes.")
    r.set_defaults(func=_recipes)

    q = sub.add_parser("quickstart", help="DualFT-Music on a GPU; the embedded smoke configuration on CPU.")
    add_run_arguments(q)
    q.set_defaults(func=_quickstart)


def _train(args) -> int:
    from kitrec_fast.recipes._main import run_from_args

    return run_from_args(args.recipe, args, _command(args))


def _command(args) -> str:
    import sys

    return " ".join(["kitrec-fast"] + [shlex.quote(a) for a in sys.argv[1:]])


def _quickstart(args) -> int:
    import torch
    from kitrec_fast.console import make_console

    from kitrec_fast.recipes._main import run_from_args

    if not torch.cuda.is_available() and not args.smoke:
        make_console().print("[yellow]no CUDA GPU[/]: running the embedded smoke configuration of dualft_music "
                        "(tiny offline Qwen3, synthetic sample data). On a GPU this command trains the real recipe.")
        args.smoke = True
    return run_from_args("dualft_music", args, _command(args))


def _recipes(args) -> int:
    from kitrec_fast.console import make_console
    from rich.table import Table

    from kitrec_fast.config import config_from_dict
    from kitrec_fast.recipes import load_recipe, list_recipes

    table = Table(title="kitrec_fast recipes")
    for col in ("recipe", "dataset", "LoRA r/alpha", "lr", "epochs", "smoothing", "NEFTune"):
        table.add_column(col)
    for name in list_recipes():
        cfg = config_from_dict(load_recipe(name))
        table.add_row(name, cfg.data.dataset, f"{cfg.lora.r}/{cfg.lora.alpha}", str(cfg.train.learning_rate),
                      str(cfg.train.epochs), str(cfg.train.label_smoothing), str(cfg.train.neftune_alpha))
    console = make_console()
    console.print(table)
    return 0
