"""How every ``kitrec-fast`` command presents its ``--help``: a one-line summary, an example epilog,
and each option's default shown once.

One place for it, so that a command added later looks like the others (``tests/test_cli_help.py``
walks the whole command tree and holds every parser to it).
"""

from __future__ import annotations

import argparse


class Formatter(argparse.HelpFormatter):
    """Paragraphs wrapped to the terminal, example lines kept as written; an option's default is
    appended to its help unless the help already speaks of its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        blocks = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith("  ") for line in lines):  # commands: a wrapped command cannot be pasted
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(textwrap.fill(" ".join(block.split()), width, initial_indent=indent,
                                            subsequent_indent=indent))
        return "\n\n".join(blocks)

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        # A flag's default and one that says nothing ("not given") are not shown as "(default: None)".
        silent = action.nargs == 0 or default is None or default is False or default is argparse.SUPPRESS or default in ([], ())
        if silent or "default" in text.lower():
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        # a literal %: argparse expands the help string with % formatting
        return f"{text} (default: {shown.replace('%', '%%')})"


def examples(*commands: str) -> str:
    """The epilog: the commands a person would type, one per line."""
    return ("example:\n" if len(commands) == 1 else "examples:\n") + "\n".join(f"  {c}" for c in commands)


def command(sub: argparse._SubParsersAction, name: str, summary: str, *example: str,
            description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose list entry is ``summary`` and whose ``--help`` opens with ``description``
    (default: the summary) and closes with ``example``."""
    return sub.add_parser(name, help=summary, description=description or summary,
                          epilog=examples(*example) if example else None, formatter_class=Formatter, **kwargs)


def parser(prog: str, summary: str, *example: str, description: str | None = None,
           **kwargs) -> argparse.ArgumentParser:
    """A top-level parser (a command with a parser of its own, e.g. ``train``, ``grid``) held to the
    same presentation as :func:`command`."""
    return argparse.ArgumentParser(prog=prog, description=description or summary,
                                   epilog=examples(*example) if example else None, formatter_class=Formatter,
                                   **kwargs)
