"""Every command's ``--help`` is something a person can work from: a one-line description, an example,
help text for every option with its default, and no markup or source paths in the plain text.

The walk starts at ``kitrec-fast``'s own parser and follows every subcommand; ``train``,
``quickstart`` and ``grid`` parse with parsers of their own (the top-level entries only list them),
so the walk takes those real parsers in their place.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

# Words an option's help may start with although capitalised: names and acronyms.
PROPER = {"Hub", "JSON", "JSONL", "GPU", "CPU", "LoRA", "Ray", "KitREC", "Unsloth", "PEFT", "vLLM", "Qwen3", "A", "B"}
MARKUP = [("``", "reST literal"), ("[/", "rich markup"), ("[green]", "rich markup"), (":func:", "reST role"),
          (":data:", "reST role"), (":class:", "reST role")]


def _real_parser(path: tuple[str, ...], parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser that really parses ``kitrec-fast PATH`` (a few commands are only listed at the top)."""
    from kitrec_fast.grid.cli import build_parser as grid_parser
    from kitrec_fast.train.cli import quickstart_parser, train_parser

    if path == ("train",):
        return train_parser()
    if path == ("quickstart",):
        return quickstart_parser()
    if path == ("grid",):
        return grid_parser()
    return parser


def walk():
    """``(path, parser)`` for ``kitrec-fast`` and every command and subcommand under it."""
    from kitrec_fast.cli import build_parser

    todo = [((), build_parser())]
    while todo:
        path, parser = todo.pop(0)
        parser = _real_parser(path, parser)
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(path + (name,), sub) for name, sub in action.choices.items()]


def options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction,
                                                              argparse._VersionAction))
            and a.help is not argparse.SUPPRESS]


TREE = list(walk())


def test_the_walk_reaches_every_command():
    names = {" ".join(path) for path, _ in TREE}
    for expected in ("data prepare", "data synth", "data inspect", "train", "quickstart", "recipes", "export",
                     "push", "eval generate", "eval score", "eval compare", "eval loss", "grid", "doctor",
                     "recommend"):
        assert expected in names
    total = sum(len(options(p)) for _, p in TREE)
    print(f"{len(TREE)} commands, {total} options")  # the figure the docs quote
    assert total > 100


@pytest.mark.parametrize("path,parser", TREE, ids=[" ".join(p) or "kitrec-fast" for p, _ in TREE])
def test_every_command_has_a_one_line_description_and_an_example(path, parser):
    description = (parser.description or "").strip()
    assert description, f"kitrec-fast {' '.join(path)}: no description"
    first = description.splitlines()[0]
    assert first[0].isupper() and first.endswith("."), f"description's first line is not a sentence: {first!r}"
    if path:  # the bare program's epilog would only repeat its commands' examples
        epilog = parser.epilog or ""
        assert re.search(r"^examples?:\n  kitrec-fast " + re.escape(" ".join(path)), epilog, re.M), \
            f"kitrec-fast {' '.join(path)}: no example of itself in its epilog: {epilog!r}"


@pytest.mark.parametrize("path,parser", TREE, ids=[" ".join(p) or "kitrec-fast" for p, _ in TREE])
def test_every_option_has_help_with_its_default(path, parser):
    from kitrec_fast.clihelp import Formatter

    assert parser.formatter_class is Formatter, f"kitrec-fast {' '.join(path)} formats its help its own way"
    formatter = parser._get_formatter()
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        text = (action.help or "").strip()
        assert text, f"kitrec-fast {' '.join(path)} {name}: no help text"
        word = text.split()[0].strip(",;:()")
        assert text[0].islower() or not text[0].isalpha() or word in PROPER, \
            f"kitrec-fast {' '.join(path)} {name}: option help starts with a capital: {text!r}"
        shown = formatter._get_help_string(action) % {"default": action.default, "prog": parser.prog}
        meaningful = action.nargs != 0 and action.default not in (None, [], ()) \
            and action.default is not argparse.SUPPRESS
        if meaningful:
            assert "default" in shown.lower(), f"kitrec-fast {' '.join(path)} {name}: default {action.default!r} not shown"
        if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
            # a number written into the help by hand must be the real one
            assert f"{action.default:g}" in shown, f"kitrec-fast {' '.join(path)} {name}: help says {shown!r}, " \
                                                 f"the default is {action.default:g}"


@pytest.mark.parametrize("path,parser", TREE, ids=[" ".join(p) or "kitrec-fast" for p, _ in TREE])
def test_no_markup_or_source_paths_leak_into_help(path, parser):
    text = parser.format_help()
    for mark, kind in MARKUP:
        assert mark not in text, f"kitrec-fast {' '.join(path)} --help shows {kind} {mark!r}"
    assert not re.search(r"\b[\w/]+\.py\b", text), f"kitrec-fast {' '.join(path)} --help points to a source file"


def test_help_of_a_subcommand_from_the_console_script():
    """The same text reaches a person through the installed command (not only through the parser objects)."""
    out = subprocess.run([sys.executable, "-m", "kitrec_fast", "eval", "generate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "examples:\n  kitrec-fast eval generate --run" in out.stdout
    assert "length limit of each answer (default: 2048)" in " ".join(out.stdout.split())
