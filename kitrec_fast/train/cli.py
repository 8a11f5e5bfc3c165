"""The training command: one parser for ``kitrec-fast train``, ``kitrec-fast quickstart`` and
``python -m kitrec_fast.recipes.<family>``; plus ``kitrec-fast recipes``.

``KEY=VALUE`` overrides may stand anywhere on the line (argparse's intermixed parsing; a later one
for the same key wins). A flag given twice, or a key set both by a shorthand flag and by
``KEY=VALUE`` with another value, is an error rather than a silent last-one-wins.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex

from kitrec_fast.config import ConfigError, RunConfig, apply_overrides, config_from_dict

# shorthand flag -> the recipe key it sets
SHORTHANDS = {"backend": "backend", "max_steps": "train.max_steps", "output_dir": "output_dir",
              "dataset": "data.dataset", "model": "model.name", "push_to_hub": "push_to_hub"}


def _first_time(namespace, dest: str, option_string: str) -> None:
    # A UserError, not parser.error: one `error:` line from run_cli instead of the whole usage.
    if getattr(namespace, f"_seen_{dest}", False):
        raise ConfigError(f"{option_string}: given twice; give it once")
    setattr(namespace, f"_seen_{dest}", True)


class _Once(argparse.Action):
    """store, but giving the same option twice is an error (which value was meant is unknowable)."""

    def __call__(self, parser, namespace, values, option_string=None):
        _first_time(namespace, self.dest, option_string)
        setattr(namespace, self.dest, values)


class _OnceWhole(_Once):
    """A whole number given once; the conversion is ours, not argparse's ``type=int``, whose error
    prints the whole usage block instead of one line like ``train.max_steps=2.5`` gets."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            number = int(values)
        except ValueError:
            raise ConfigError(f"{option_string}: expects a whole number, got {values!r}") from None
        super().__call__(parser, namespace, number, option_string)


class _OnceFlag(argparse.Action):
    """store_true, given at most once (``--smoke --smoke`` is a slip to point out, like any repeat)."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        _first_time(namespace, self.dest, option_string)
        setattr(namespace, self.dest, True)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set_name", action=_Once, choices=["A", "B", "a", "b"], default=None,
                   help="candidate set of the recipe family (default A)")
    p.add_argument("--backend", action=_Once, choices=["unsloth", "peft"],
                   help="unsloth (the fast path) or peft (the baseline) (default: the recipe's)")
    p.add_argument("--smoke", action=_OnceFlag,
                   help="tiny offline Qwen3, embedded sample data, a few steps: runs on CPU in about a minute")
    p.add_argument("--dry-run", action=_OnceFlag,
                   help="resolve and check everything the run would (config, names, data, run directory), print "
                        "the resolved configuration and exit; writes nothing")
    p.add_argument("--profile", action=_Once, choices=["auto", "16gb", "24gb", "48gb", "80gb"], default=None,
                   help="GPU memory profile (max length, micro-batch, checkpointing) (default: the recipe as is)")
    p.add_argument("--max-steps", action=_OnceWhole, metavar="N", help="shorthand for train.max_steps=N (default: the recipe's epochs)")
    p.add_argument("--output-dir", action=_Once, metavar="DIR", help="shorthand for output_dir=DIR, the run directory (default: runs/RECIPE-BACKEND)")
    p.add_argument("--dataset", action=_Once, metavar="D", help="shorthand for data.dataset=D, a Hub id or a local file (default: the recipe's)")
    p.add_argument("--model", action=_Once, metavar="M", help="shorthand for model.name=M, a Hub id or a local directory (default: the recipe's)")
    p.add_argument("--push-to-hub", action=_Once, metavar="REPO", help="upload the best adapter to this Hub repository when training ends")
    p.add_argument("--accept-config-change", action=_OnceFlag,
                   help="resume although training-relevant settings differ from the run directory's; the "
                        "change is recorded in the run (attempts.json)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    p.add_argument("--verbose", action="store_true",
                   help="show the harmless library lines kitrec-fast hides (the troubleshooting page lists them and why "
                        "each is harmless); also KITREC_FAST_VERBOSE=1")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="any recipe key, dotted, anywhere on the line: train.learning_rate=1e-4 data.max_length=4096")


TRAIN_HELP = "Train a recipe (a name, a family with --set, or a YAML path)."
TRAIN_EXAMPLES = ("kitrec-fast train dualft_music --smoke --backend peft --output-dir runs/music-smoke",
                  "kitrec-fast train dualft_music --set B --profile 24gb train.learning_rate=1e-4")
QUICKSTART_HELP = "Train DualFT-Music on a GPU, or the embedded smoke configuration on a CPU."
QUICKSTART_EXAMPLES = ("kitrec-fast quickstart", "kitrec-fast quickstart --backend peft --output-dir runs/qs-peft")
RECIPES_HELP = "List the shipped recipes with their main hyperparameters."


def build_parser(prog: str, with_recipe: bool, description: str = TRAIN_HELP,
                 examples: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    from kitrec_fast.clihelp import parser

    p = parser(prog, description, *examples)
    if with_recipe:
        p.add_argument("recipe", help="e.g. dualft_music, dualft_music_setb, or path/to/recipe.yaml")
    add_run_arguments(p)
    return p


def train_parser() -> argparse.ArgumentParser:
    return build_parser("kitrec-fast train", True, TRAIN_HELP, TRAIN_EXAMPLES)


def quickstart_parser() -> argparse.ArgumentParser:
    return build_parser("kitrec-fast quickstart", False, QUICKSTART_HELP, QUICKSTART_EXAMPLES)


def parse_run_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_intermixed_args(argv)


def _parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` items in order; a later one for the same key wins (layered presets, then a tweak)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides are KEY=VALUE (e.g. train.learning_rate=1e-4)")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def resolve_config(recipe: str, args: argparse.Namespace) -> RunConfig:
    from kitrec_fast.recipes import load_recipe, recipe_name, smoke_overrides

    raw = load_recipe(recipe_name(recipe, args.set_name))
    overrides: dict = {}
    if args.smoke:
        overrides.update(smoke_overrides(raw))
        overrides["smoke"] = "true"
    given = {key: getattr(args, dest) for dest, key in SHORTHANDS.items() if getattr(args, dest) is not None}
    overrides.update(given)
    for key, value in _parse_overrides(args.overrides).items():
        if key in given and str(given[key]) != value:
            dest = next(d for d, k in SHORTHANDS.items() if k == key)
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{key}: set twice ({flag} {given[key]} and {key}={value}); give it once")
        overrides[key] = value
    cfg = config_from_dict(apply_overrides(raw, overrides))
    from kitrec_fast.parallel import distribute, world_size

    if args.profile:
        from kitrec_fast.profiles import apply_profile

        return apply_profile(cfg, args.profile, world_size=world_size())
    return distribute(cfg)  # under torchrun / accelerate launch: each process's share of the batch


def run(recipe: str, args: argparse.Namespace, command: str) -> int:
    from kitrec_fast.console import make_console
    from kitrec_fast.train import run as training

    console = make_console()
    cfg = resolve_config(recipe, args)
    if args.dry_run:
        notes = training.validate(cfg, command, accept_config_change=args.accept_config_change, dry_run=True)
        console.print(training.config_table(cfg, title=f"{cfg.recipe} (resolved, dry run)"))
        for note in notes:
            console.print(f"[yellow]note[/] {note}", soft_wrap=True)  # a suggested command stays one line
        console.print("[green]dry run[/]: the configuration is valid; nothing was written.")
        return 0
    from kitrec_fast.errors import UserError
    from kitrec_fast.parallel import is_main_process
    from kitrec_fast.train.runlog import captured

    # Rank 0 writes the run directory and its train.log; the other ranks print nothing of their own.
    with captured() if is_main_process() else contextlib.nullcontext() as log:
        try:
            result = training.run_training(cfg, command=command, console=console,
                                           accept_config_change=args.accept_config_change, log=log)
        except UserError as exc:
            if log is not None:  # printed to stderr by run_cli, after this capture has ended
                log.write(f"error: {exc}\n")
            raise
    return result.exit_code


def _command(prefix: list[str], argv: list[str]) -> str:
    return " ".join(prefix + [shlex.quote(a) for a in argv])


def main_train(argv: list[str]) -> int:
    """``kitrec-fast train RECIPE ...``"""
    args = parse_run_args(train_parser(), argv)
    return run(args.recipe, args, _command(["kitrec-fast", "train"], argv))


def main_recipe(family: str, argv: list[str]) -> int:
    """``python -m kitrec_fast.recipes.<family> ...``"""
    parser = build_parser(f"python -m kitrec_fast.recipes.{family}", False, f"Train the KitREC {family} recipe.",
                          (f"python -m kitrec_fast.recipes.{family} --smoke --backend peft",))
    args = parse_run_args(parser, argv)
    return run(family, args, _command(["python", "-m", f"kitrec_fast.recipes.{family}"], argv))


def main_quickstart(argv: list[str]) -> int:
    """``kitrec-fast quickstart``: DualFT-Music on a GPU, the embedded smoke configuration on CPU."""
    args = parse_run_args(quickstart_parser(), argv)
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        from kitrec_fast.console import make_console

        make_console().print("[yellow]no CUDA GPU[/]: running the embedded smoke configuration of dualft_music "
                             "(tiny offline Qwen3, synthetic sample data). On a GPU this command trains the real "
                             "recipe.")
        args.smoke = True
    return run("dualft_music", args, _command(["kitrec-fast", "quickstart"], argv))


def recipes_main(argv: list[str]) -> int:
    from kitrec_fast.clihelp import parser

    parser("kitrec-fast recipes", RECIPES_HELP, "kitrec-fast recipes").parse_args(argv)
    from rich.table import Table

    from kitrec_fast.console import make_console
    from kitrec_fast.recipes import list_recipes, load_recipe

    table = Table(title="kitrec_fast recipes")
    for col in ("recipe", "dataset", "LoRA r/alpha", "lr", "epochs", "smoothing", "NEFTune"):
        table.add_column(col)
    for name in list_recipes():
        cfg = config_from_dict(load_recipe(name))
        table.add_row(name, cfg.data.dataset, f"{cfg.lora.r}/{cfg.lora.alpha}", str(cfg.train.learning_rate),
                      str(cfg.train.epochs), str(cfg.train.label_smoothing), str(cfg.train.neftune_alpha))
    make_console().print(table)
    return 0


# subcommand -> entry point taking the arguments after it
COMMANDS = {"train": main_train, "quickstart": main_quickstart, "recipes": recipes_main}


def add_parser(sub) -> None:
    """Register the subcommands for ``kitrec-fast --help``; parsing itself goes through :data:`COMMANDS`."""
    from kitrec_fast.clihelp import command

    p = command(sub, "train", TRAIN_HELP, *TRAIN_EXAMPLES)
    p.add_argument("recipe", help="e.g. dualft_music, dualft_music_setb, or path/to/recipe.yaml")
    add_run_arguments(p)
    command(sub, "recipes", RECIPES_HELP, "kitrec-fast recipes")
    add_run_arguments(command(sub, "quickstart", QUICKSTART_HELP, *QUICKSTART_EXAMPLES))


__all__ = ["COMMANDS", "add_parser", "add_run_arguments", "main_recipe", "resolve_config"]
