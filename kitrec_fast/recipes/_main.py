"""Command line shared by ``python -m kitrec_fast.recipes.<family>`` and ``kitrec-fast train``."""

from __future__ import annotations

import argparse
import shlex
import sys

from kitrec_fast.config import ConfigError, RunConfig, apply_overrides, config_from_dict
from kitrec_fast.recipes import load_recipe, recipe_name, smoke_overrides


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set_name", choices=["A", "B", "a", "b"], default=None,
                   help="Candidate set of the recipe family (default A).")
    p.add_argument("--backend", choices=["unsloth", "peft"], help="unsloth (fast path) or peft (baseline).")
    p.add_argument("--smoke", action="store_true",
                   help="Tiny offline Qwen3, embedded sample data, a few steps: runs on CPU in about a minute.")
    p.add_argument("--dry-run", action="store_true", help="Print the resolved config and exit.")
    p.add_argument("--profile", choices=["auto", "16gb", "24gb", "48gb", "80gb"], default=None,
                   help="GPU memory profile (max length, micro-batch, checkpointing); default: the recipe as is.")
    p.add_argument("--max-steps", type=int, help="Shorthand for train.max_steps=N.")
    p.add_argument("--output-dir", help="Shorthand for output_dir=DIR.")
    p.add_argument("--dataset", help="Shorthand for data.dataset=D (Hub id or local file).")
    p.add_argument("--model", help="Shorthand for model.name=M (Hub id or local directory).")
    p.add_argument("--push-to-hub", metavar="REPO", help="Upload the best adapter to this Hub repo.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Any recipe key, dotted: train.learning_rate=1e-4 data.max_length=4096 ...")


def resolve_config(recipe: str, args: argparse.Namespace) -> RunConfig:
    name = recipe_name(recipe, args.set_name)
    raw = load_recipe(name)
    overrides: dict = {}
    if args.smoke:
        overrides.update(smoke_overrides(raw))
        overrides["smoke"] = "true"
    shorthands = {"backend": args.backend, "train.max_steps": args.max_steps, "output_dir": args.output_dir,
                  "data.dataset": args.dataset, "model.name": args.model, "push_to_hub": args.push_to_hub}
    given = {k: v for k, v in shorthands.items() if v is not None}
    overrides.update(given)
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides are KEY=VALUE (e.g. train.learning_rate=1e-4)")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in given and str(given[key]) != value:
            flag = "--" + {"train.max_steps": "max-steps", "output_dir": "output-dir", "data.dataset": "dataset",
                           "model.name": "model", "push_to_hub": "push-to-hub"}.get(key, key)
            raise ConfigError(f"{key}: set twice ({flag} {given[key]} and {key}={value}); give it once")
        overrides[key] = value
    # top-level scalars are validated like nested keys
    raw = _apply_top(raw, overrides)
    cfg = config_from_dict(raw)
    if args.profile:
        from kitrec_fast.profiles import apply_profile

        cfg = apply_profile(cfg, args.profile)
    return cfg


def _apply_top(raw: dict, overrides: dict) -> dict:
    top = {k: v for k, v in overrides.items() if "." not in k}
    nested = {k: v for k, v in overrides.items() if "." in k}
    raw = apply_overrides(raw, nested)
    from kitrec_fast.config import _coerce

    defaults = RunConfig().to_dict()
    for key, value in top.items():
        if key not in defaults or isinstance(defaults[key], dict):
            raise ConfigError(f"{key}: unknown option")
        raw[key] = _coerce(value, raw.get(key, defaults[key]), key)
    return raw


def run_from_args(recipe: str, args: argparse.Namespace, command: str) -> int:
    from kitrec_fast.console import make_console

    console = make_console()
    try:
        cfg = resolve_config(recipe, args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error[/] {exc}")
        return 2
    if args.dry_run:
        from kitrec_fast.train.run import config_table

        console.print(config_table(cfg, title=f"{cfg.recipe} (resolved, dry run)"))
        return 0
    from kitrec_fast.train.run import UserError, run_training

    try:
        run_training(cfg, command=command, console=console)
    except UserError as exc:
        console.print(f"[red]error[/] {exc}")
        return 2
    return 0


def main(family: str, argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m kitrec_fast.recipes.{family}",
                                     description=f"Train the KitREC {family} recipe.")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    command = " ".join(["python", "-m", f"kitrec_fast.recipes.{family}"] + [shlex.quote(a) for a in argv])
    return run_from_args(family, args, command)
