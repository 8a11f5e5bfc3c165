"""Split a KitREC prompt into its sections and item lines, and put it back together.

A prompt is a sequence of blocks, in order: the preamble (title, role, ``## Input Parameters``,
``## User Interaction History``), the source-domain history, the target-domain history, the
candidate list, and the task (everything from the first ``#`` header after the candidates).
Blocks are recognised only by their headers:

* ``### User's Books History (Source Domain):`` / ``### User's Music History (Target Domain):``
  (any domain name: Movies & TV works the same way), or the same without the suffix, as the
  evaluation template writes them (``### User's Books History:``). A suffix-less header is the
  source or target history by its domain name, matched against ``- Source Domain: X`` /
  ``- Target Domain: Y`` in the preamble (``## Input Parameters``); when the preamble names
  neither, the first such section is the source and the second the target (the documented order);
* ``## List of Available Candidate Items (100 items):`` or ``... (Total 100):`` (test prompts).

Inside a history or candidate block, a line is an *item line* when it carries an id,
``(ID: X) ...`` or ``[Item: X] | Unknown | ...`` (anywhere in the line, optionally after a list
marker), or when it is a list item ``- Title | ...`` / ``1. Title | ...`` (an item without an id).
Every other line is fixed text that truncation never removes: blank lines, notes, the
``(Format: - {title} | ...)`` line the evaluation template puts after each history list, and
the lone ``[`` / ``]`` lines it wraps the (indented) candidate lines in. A ``#``
header inside the history region that is not one of the known ones starts a fixed ``text``
block, so its lines are never mistaken for droppable items.

Lines are split on ``"\\n"`` only (not ``str.splitlines``, which also breaks on ``\\r``,
``\\u2028`` and friends that appear inside Amazon review summaries) and keep their newline, so
``render()`` reproduces the original text byte for byte when nothing was removed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional

from kitrec_fast.errors import UserError

PREAMBLE, SOURCE, TARGET, CANDIDATES, TEXT, TASK = (
    "preamble", "source_history", "target_history", "candidates", "text", "task")
HISTORY_KINDS = (SOURCE, TARGET)

_HISTORY_HEADER = re.compile(
    r"^\s*#{1,6}\s*User'?s\s+(?P<domain>.+?)\s+History\s*(?:\((?P<side>Source|Target)\s+Domain\)|:?\s*$)",
    re.IGNORECASE)
_DOMAIN_PARAM = re.compile(r"^\s*[-*]\s*(?P<side>Source|Target)\s+Domain\s*:\s*(?P<name>.+?)\s*$", re.IGNORECASE)
_CANDIDATE_HEADER = re.compile(r"^\s*#{1,6}\s*List of Available Candidate Items\b", re.IGNORECASE)
_HEADER_COUNT = re.compile(r"\((?P<n>\d+)(?P<unit>\s+items?\))|\((?P<total>Total\s+)(?P<tn>\d+)\)", re.IGNORECASE)
_ID = re.compile(r"\(ID:\s*(?P<a>[A-Za-z0-9]+)\s*\)|\[Item:\s*(?P<b>[A-Za-z0-9]+)\s*\]")
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")


class PromptFormatError(UserError):
    """The prompt does not have the KitREC layout (e.g. no candidate section)."""


class Line(NamedTuple):
    # a NamedTuple rather than a dataclass: ~150 per prompt, and creating them dominates parsing
    text: str  # with its trailing "\n" (absent only on the prompt's last line)
    item_id: Optional[str] = None
    is_item: bool = False


@dataclass(frozen=True)
class Block:
    kind: str
    header: str = ""  # the header line (with newline); "" for preamble/task
    lines: tuple[Line, ...] = ()

    @property
    def items(self) -> list[Line]:
        return [ln for ln in self.lines if ln.is_item]

    def render(self) -> str:
        return self.header + "".join(ln.text for ln in self.lines)


@dataclass(frozen=True)
class ParsedPrompt:
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    def block(self, kind: str) -> Optional[Block]:
        for b in self.blocks:
            if b.kind == kind:
                return b
        return None

    @property
    def preamble(self) -> str:
        b = self.block(PREAMBLE)
        return b.render() if b else ""

    @property
    def task(self) -> str:
        b = self.block(TASK)
        return b.render() if b else ""

    @property
    def source_history(self) -> Optional[Block]:
        return self.block(SOURCE)

    @property
    def target_history(self) -> Optional[Block]:
        return self.block(TARGET)

    @property
    def candidates(self) -> Optional[Block]:
        return self.block(CANDIDATES)

    @property
    def candidate_ids(self) -> list[str]:
        """Ids of the candidate item lines, in prompt order (lines without an id are skipped)."""
        b = self.candidates
        return [] if b is None else [ln.item_id for ln in b.lines if ln.is_item and ln.item_id]

    def render(self) -> str:
        return "".join(b.render() for b in self.blocks)

    def replace_block(self, kind: str, **changes) -> "ParsedPrompt":
        return ParsedPrompt(tuple(dataclasses.replace(b, **changes) if b.kind == kind else b
                                  for b in self.blocks))


def split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def classify_line(text: str) -> Line:
    m = _ID.search(text)
    if m:
        return Line(text, m.group("a") or m.group("b"), True)
    return Line(text, None, bool(_LIST_ITEM.match(text)))


def header_count(header: str) -> Optional[int]:
    """The candidate count written in a candidate header, or None when it states none."""
    m = _HEADER_COUNT.search(header)
    if not m:
        return None
    return int(m.group("n") or m.group("tn"))


def rewrite_header_count(header: str, count: int) -> str:
    """``(100 items)`` -> ``(50 items)``, ``(Total 100)`` -> ``(Total 50)``; other headers unchanged."""

    def sub(m: re.Match) -> str:
        if m.group("n") is not None:
            return f"({count}{m.group('unit')}"
        return f"({m.group('total')}{count})"

    return _HEADER_COUNT.sub(sub, header, count=1)


def _domain_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def parse_prompt(text: str) -> ParsedPrompt:
    """Split ``text`` into blocks; raises PromptFormatError when there is no candidate section."""
    blocks: list[Block] = []
    kind, header, lines = PREAMBLE, "", []
    domains: dict[str, str] = {}  # casefolded domain name -> SOURCE / TARGET, from the preamble

    def close() -> None:
        if header or lines or kind == PREAMBLE:
            blocks.append(Block(kind, header, tuple(_lines(kind, lines))))

    for raw in split_lines(text):
        if kind in (TASK,):
            lines.append(raw)
            continue
        stripped = raw.lstrip()
        if not stripped.startswith("#"):
            if kind == PREAMBLE and "Domain" in raw:
                param = _DOMAIN_PARAM.match(raw)
                if param:
                    domains.setdefault(_domain_key(param.group("name")),
                                       SOURCE if param.group("side").lower() == "source" else TARGET)
            lines.append(raw)
            continue
        hist = _HISTORY_HEADER.match(raw)
        if hist:
            close()
            kind, header, lines = _history_side(hist, domains, blocks), raw, []
        elif _CANDIDATE_HEADER.match(raw):
            close()
            kind, header, lines = CANDIDATES, raw, []
        elif kind == CANDIDATES:
            close()
            kind, header, lines = TASK, "", [raw]
        elif kind == PREAMBLE:
            lines.append(raw)
        else:
            close()
            kind, header, lines = TEXT, "", [raw]
    close()
    kinds = [b.kind for b in blocks]
    if CANDIDATES not in kinds:
        raise PromptFormatError("prompt has no '## List of Available Candidate Items' section")
    if kinds.count(CANDIDATES) > 1:
        raise PromptFormatError("prompt has more than one candidate section")
    for k in HISTORY_KINDS:
        if kinds.count(k) > 1:
            raise PromptFormatError(f"prompt has more than one {k.replace('_', ' ')} section")
    return ParsedPrompt(tuple(blocks))


def _history_side(hist: re.Match, domains: dict[str, str], blocks: list[Block]) -> str:
    side = hist.group("side")
    if side:
        return SOURCE if side.lower() == "source" else TARGET
    named = domains.get(_domain_key(hist.group("domain")))
    if named is not None:
        return named
    # the preamble does not name this domain: the documented order, source history first
    return TARGET if any(b.kind == SOURCE for b in blocks) else SOURCE


def _lines(kind: str, raw_lines: Iterable[str]) -> list[Line]:
    if kind in HISTORY_KINDS or kind == CANDIDATES:
        return [classify_line(r) for r in raw_lines]
    return [Line(r) for r in raw_lines]
