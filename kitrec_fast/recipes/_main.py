"""The body of every ``python -m kitrec_fast.recipes.<family>`` module: the training command's
own parser (``kitrec_fast.train.cli``) with the family as the recipe."""

from __future__ import annotations

from kitrec_fast.errors import run_cli


def main(family: str, argv: list[str] | None = None) -> int:
    from kitrec_fast.train.cli import main_recipe

    return run_cli(lambda args: main_recipe(family, args), argv)
