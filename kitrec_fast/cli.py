"""The ``kitrec-fast`` console script: one subcommand family per stage of the data flow."""

from __future__ import annotations

import argparse
import importlib

from kitrec_fast.errors import run_cli

# name -> module providing add_parser(subparsers); imported lazily so `kitrec-fast data ...`
# never pays for (or is patched by) the training stack.
_FAMILIES = {
    "data": "kitrec_fast.data.cli",
    "train": "kitrec_fast.train.cli",
    "recipes": "kitrec_fast.train.cli",
    "quickstart": "kitrec_fast.train.cli",
    "export": "kitrec_fast.artifacts.cli",
    "push": "kitrec_fast.artifacts.cli",
    "eval": "kitrec_fast.eval.cli",
    "grid": "kitrec_fast.grid.cli",
    "doctor": "kitrec_fast.doctor",
    "recommend": "kitrec_fast.recommend",
    "serve": "kitrec_fast.serve",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from kitrec_fast import __version__

    from kitrec_fast.clihelp import parser as make_parser

    parser = make_parser("kitrec-fast", "Fast QLoRA fine-tuning for KitREC.",
                         description="Fast QLoRA fine-tuning for KitREC. Each command's --help has an example.")
    # Both are taken off the command line by run_cli, wherever they stand; listed here for --help.
    parser.add_argument("--verbose", action="store_true",
                        help="show the harmless library lines every command hides (the troubleshooting page lists them and "
                             "why each is harmless); also KITREC_FAST_VERBOSE=1")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    parser.add_argument("--version", action="version", version=f"kitrec-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen = set()
    for name, module in _FAMILIES.items():
        if only is not None and name != only:
            continue
        if module in seen:
            continue
        seen.add(module)
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as exc:  # a stage not built yet in this checkout
            if exc.name != module:
                raise
    return parser


def _main(argv: list[str]) -> int:
    if argv and argv[0] in ("train", "quickstart", "recipes"):
        # the training command has its own parser (shared with `python -m kitrec_fast.recipes.*`)
        from kitrec_fast.train.cli import COMMANDS

        return COMMANDS[argv[0]](argv[1:])
    only = argv[0] if argv and argv[0] in _FAMILIES else None
    if argv[:1] == ["--version"]:
        only = ""  # no subcommand module is imported just to print the version
    args = build_parser(only).parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
