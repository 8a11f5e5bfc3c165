"""Turn a model's raw generation into a ranked list of candidate item ids.

What models actually emit varies a lot: a ``<think>`` block or none, a think block cut off by
the token limit, fenced or bare JSON, one object or an array, trailing commas, prose around the
JSON, repeated ids, ids that were never among the candidates, and ``rank`` fields that disagree
with the list order. :func:`parse_recommendations` handles all of these and never raises.

Rules (the contract the scorer relies on):

* Only the text after the last ``</think>`` is searched, so ids discussed while reasoning are
  never mistaken for the answer. If ``<think>`` was opened but never closed, everything after
  the opening tag is searched and ``think_closed`` is ``False``.
* A fenced block (```` ```json ````, then an unlabelled fence) is preferred; otherwise the last
  balanced JSON array/object that looks like recommendations; then the complete objects of an
  array cut off mid-way (``truncated=True``). The first of these naming at least one valid
  candidate wins, so a stray array in trailing prose cannot hide the real answer.
* Entries may be objects carrying ``item_id`` (``id``/``asin`` accepted too) or bare id
  strings; a single object is a list of one; ``{"recommendations": [...]}``-style wrappers are
  unwrapped.
* List order is the ranking, as in the KitREC paper, even when ``rank`` fields disagree
  (``ranks_disagree`` records that they did).
* Every entry is kept in ``entries``, in emitted order. Ids are trimmed and matched to the
  candidates case-insensitively (models write ASINs in lower case; ASINs are case-free) and
  stored in the candidate's spelling; an id that is missing or not among ``candidate_ids`` is
  ``None`` there and counted in ``n_invalid``; an id already seen earlier is counted in
  ``n_duplicates`` but keeps its place. How entries become a ranked list is the scoring
  protocol's business (``kitrec_fast.eval.protocol``); ``ranked_ids`` is the paper's list
  (valid ids in emitted order, repeats in place).
* ``confidence`` is the ``confidence_score`` (0-10) of the first valid entry, i.e. the model's
  confidence in its top valid pick; the scorer compares it (halved) with the user's rating.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["Entry", "ParseResult", "parse_recommendations"]

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_ID_KEYS = ("item_id", "itemId", "id", "asin")
_CONFIDENCE_KEYS = ("confidence_score", "confidence")
_WRAPPER_KEYS = ("recommendations", "items", "ranking", "results", "top_10", "top10")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[^\n]*\n(.*?)```", re.DOTALL)
# A comma followed only by whitespace and a closer is invalid JSON that models emit often.
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
# Each stray opener costs a rescan of the rest; a bound keeps bracket-soup linear-ish.
_MAX_RESCANS = 8


@dataclass(frozen=True)
class Entry:
    """One emitted recommendation: its id as written and, if it names a candidate, that candidate."""

    emitted: str | None
    item_id: str | None  # the candidate's own spelling; None: no id, or not a candidate
    confidence: float | None
    title: str | None = None  # as the model wrote them; shown by `recommend`, never scored
    rationale: str | None = None


@dataclass
class ParseResult:
    """The parsed answer for one generation (see the module docstring for the rules)."""

    entries: list[Entry] = field(default_factory=list)
    confidence: float | None = None
    parse_failed: bool = True
    n_items: int = 0  # entries found in the JSON, before any were dropped
    n_invalid: int = 0
    n_duplicates: int = 0
    think_closed: bool = True
    has_think: bool = False
    truncated: bool = False
    ranks_disagree: bool = False
    source: str | None = None  # "fenced", "bare" or "truncated": where the JSON came from

    @property
    def ranked_ids(self) -> list[str]:
        """Valid ids in emitted order, repeats in place (the KitREC paper's ranked list)."""
        return [e.item_id for e in self.entries if e.item_id is not None]

    @property
    def confidences(self) -> list[float | None]:
        """Parallel to :attr:`ranked_ids`."""
        return [e.confidence for e in self.entries if e.item_id is not None]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "entries"}
        out["entries"] = [dataclasses.asdict(e) for e in self.entries]
        out["ranked_ids"] = self.ranked_ids
        return out


def parse_recommendations(text: str, candidate_ids: Sequence[str] | None) -> ParseResult:
    """Parse ``text`` into ranked ids valid against ``candidate_ids`` (``None``: accept any id)."""
    try:
        return _parse(text, candidate_ids)
    except Exception:  # garbage in must never take a whole scoring run down
        return ParseResult()


def _parse(text: Any, candidate_ids: Sequence[str] | None) -> ParseResult:
    text = "" if text is None else str(text)
    region, has_think, think_closed = _answer_region(text)
    result = ParseResult(has_think=has_think, think_closed=think_closed)
    valid = None if candidate_ids is None else _canonical_map(candidate_ids)
    found = _find_entries(region, valid)
    if found is None:
        return result
    entries, source = found
    result.parse_failed = False
    result.source = source
    result.truncated = source == "truncated"
    result.n_items = len(entries)
    result.ranks_disagree = _ranks_disagree(entries)
    seen: set[str] = set()
    for entry in entries:
        emitted = _entry_id(entry)
        item_id = _match(emitted, valid)
        if item_id is None:
            result.n_invalid += 1
        elif item_id in seen:
            result.n_duplicates += 1
        else:
            seen.add(item_id)
        result.entries.append(Entry(emitted, item_id, _entry_confidence(entry), _entry_text(entry, "title"),
                                    _entry_text(entry, "rationale")))
    first_valid = next((e for e in result.entries if e.item_id is not None), None)
    result.confidence = None if first_valid is None else first_valid.confidence
    return result


def _canonical_map(candidate_ids: Sequence[str]) -> dict[str, str]:
    """Upper-cased candidate id -> the candidate's own spelling (ASINs are case-free)."""
    out: dict[str, str] = {}
    for c in candidate_ids:
        c = str(c).strip()
        out.setdefault(c.upper(), c)
    return out


def _match(emitted: str | None, valid: dict[str, str] | None) -> str | None:
    if emitted is None:
        return None
    if valid is None:
        return emitted
    return valid.get(emitted.upper())


def _answer_region(text: str) -> tuple[str, bool, bool]:
    """Return (text to search, had a think block, think block was closed)."""
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        return text[close + len(_THINK_CLOSE):], True, True
    start = text.find(_THINK_OPEN)
    if start >= 0:
        return text[start + len(_THINK_OPEN):], True, False
    return text, False, True


def _find_entries(region: str, valid: dict[str, str] | None) -> tuple[list[Any], str] | None:
    """The first answer-like JSON in preference order that names a valid candidate.

    If none names one, the first answer-like JSON wins anyway, so a list of only invalid ids is
    still reported as parsed (and its entries counted invalid) rather than as a parse failure.
    """
    fallback = None
    for entries, source in _answer_candidates(region):
        if valid is None or any(_match(_entry_id(e), valid) is not None for e in entries):
            return entries, source
        fallback = fallback or (entries, source)
    return fallback


def _answer_candidates(region: str) -> Iterator[tuple[list[Any], str]]:
    fences = [(lang.lower(), body) for lang, body in _FENCE.findall(region)]
    ordered = [b for lang, b in reversed(fences) if lang == "json"]
    ordered += [b for lang, b in reversed(fences) if lang != "json"]
    for body in ordered:
        entries = _entries_from_text(body)
        if entries is not None:
            yield entries, "fenced"
    offset = 0
    for _ in range(_MAX_RESCANS):
        spans, unclosed_at, children = _scan_json_spans(region, offset)
        for start, end in reversed(spans):
            entries = _entries_from_json(_loads_lenient(region[start:end]))
            if entries is not None:
                yield entries, "bare"
        if unclosed_at is None:
            break
        if children:  # an array cut off by the token limit: keep its finished items
            salvaged = [_loads_lenient(region[s:e]) for s, e in children]
            entries = _entries_from_json([obj for obj in salvaged if obj is not None])
            if entries is not None:
                yield entries, "truncated"
        # a stray opener in prose hides everything after it; look again past it
        offset = unclosed_at + 1


def _entries_from_text(text: str) -> list[Any] | None:
    parsed = _loads_lenient(text.strip())
    if parsed is not None:
        return _entries_from_json(parsed)
    # a fence may hold prose plus JSON; treat its inside like bare text
    spans, _, _ = _scan_json_spans(text, 0)
    for start, end in reversed(spans):
        entries = _entries_from_json(_loads_lenient(text[start:end]))
        if entries is not None:
            return entries
    return None


def _scan_json_spans(
    text: str, offset: int
) -> tuple[list[tuple[int, int]], int | None, list[tuple[int, int]]]:
    """Balanced top-level ``[...]``/``{...}`` spans of ``text[offset:]``, string-aware.

    Also returns where the outermost opener left unclosed at the end is (if any) and, when it is
    an array, the complete spans directly inside it.
    """
    spans: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    children: list[tuple[int, int]] = []
    in_string = escaped = False
    pairs = {"]": "[", "}": "{"}
    for i in range(offset, len(text)):
        ch = text[i]
        if in_string:  # quotes only matter inside JSON; prose quotes and apostrophes are ignored
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and stack:
            in_string = True
        elif ch in "[{":
            if not stack:
                children = []
            stack.append((ch, i))
        elif ch in "]}" and stack:
            opener, start = stack[-1]
            if opener != pairs[ch]:
                stack.clear()  # mismatched brackets: this candidate is not JSON, start over
                continue
            stack.pop()
            if not stack:
                spans.append((start, i + 1))
            elif len(stack) == 1:
                children.append((start, i + 1))
    if not stack:
        return spans, None, []
    return spans, stack[0][1], children if stack[0][0] == "[" else []


def _loads_lenient(text: str) -> Any:
    for candidate in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return None


def _entries_from_json(obj: Any) -> list[Any] | None:
    """Recommendation entries in ``obj``, or None when it does not look like an answer."""
    if isinstance(obj, dict):
        if _entry_id(obj) is not None:
            return [obj]
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), list):
                return _entries_from_json(obj[key])
        lists = [v for v in obj.values() if isinstance(v, list)]
        return _entries_from_json(lists[0]) if len(lists) == 1 else None
    if isinstance(obj, list):
        looks_right = any(_entry_id(e) is not None for e in obj)
        return list(obj) if obj and looks_right else None
    return None


def _entry_id(entry: Any) -> str | None:
    if isinstance(entry, str):
        value: Any = entry
    elif isinstance(entry, dict):
        value = next((entry[k] for k in _ID_KEYS if entry.get(k) is not None), None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
    else:
        return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _entry_text(entry: Any, key: str) -> str | None:
    value = entry.get(key) if isinstance(entry, dict) else None
    return value.strip() or None if isinstance(value, str) else None


def _entry_confidence(entry: Any) -> float | None:
    if not isinstance(entry, dict):
        return None
    for key in _CONFIDENCE_KEYS:
        value = entry.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        # out-of-scale values would distort MAE/RMSE more than a missing value does
        if math.isfinite(number) and 0.0 <= number <= 10.0:
            return number
    return None


def _ranks_disagree(entries: list[Any]) -> bool:
    ranks = []
    for entry in entries:
        if isinstance(entry, dict) and "rank" in entry:
            try:
                ranks.append(float(entry["rank"]))
            except (TypeError, ValueError):
                return True
    return any(b <= a for a, b in zip(ranks, ranks[1:]))
