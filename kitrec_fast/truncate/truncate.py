"""Segment-aware truncation of one prompt to a token budget.

The budget (``max_length``, default 5,120) covers the whole rendered conversation: chat-template
special tokens, prompt and target. The target is never shortened and the ground-truth candidate
is never dropped. Steps, in order:

1. Candidates are always cut to ``max_candidates`` (the recipe's "100 -> 50 always"), *also for a
   row that already fits*, so every training prompt shows the same number of candidates. The GT
   line stays, the kept lines keep their original order, and the kept negatives are the ones
   with the smallest SplitMix64 hash of (BLAKE2b digest of ``(seed, user_id, gt_item_id)``, line
   position): deterministic per row and across machines (no Python ``hash()``, no RNG stream),
   independent of the other rows. When the count
   changes, the header count is rewritten (``(100 items)`` -> ``(50 items)``, ``(Total 100)`` ->
   ``(Total 50)``) so the prompt stays self-consistent.
   ``keep_cited=True`` (``data.keep_cited_candidates``) moves the negatives that the training
   target cites (``cited``, see :func:`cited_candidates`) to the front of that order, each group
   keeping its digest order: the target then only discusses items the prompt shows (as long as
   the budget keeps that many), and the kept sets stay nested across budgets. The default keeps
   the published behaviour, which promises only that the ground truth survives; the record
   counts the cited negatives either way (``cited_before`` / ``cited_cut``).
2. While over budget, the oldest history item line is dropped, from whichever history section
   currently has more item lines (the source section on a tie), never the last item line of a
   section that had any. ``history_recent="last"`` (default) means the last line of a list is
   the most recent interaction, so lines are dropped from the top; ``"first"`` drops from the bottom.
3. While still over budget, more negatives are dropped (same digest order, so the kept sets are
   nested) down to ``min_candidates``.
4. A row still over budget raises BadRowError (the pipeline skips it under ``on_bad_row=skip``).

Token counting: every line's cost is computed once (one batched call through ``line_costs``) and
the plan subtracts the costs of the removed lines from the exact length of the untouched
rendering. The assembled rendering is then measured exactly with ``measure`` (the final text is
what counts); when the estimate was off (token merges at section ends), the difference is carried
into the next round of cuts and the text is measured again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import re

import numpy as np

from kitrec_fast.badrow import BadRowError
from kitrec_fast.stable_key import stable_key
from kitrec_fast.truncate.sections import (CANDIDATES, HISTORY_KINDS, SOURCE, TARGET, Block, ParsedPrompt,
                                           rewrite_header_count)

MAX_MEASUREMENTS = 8


@dataclass(frozen=True)
class TruncateOptions:
    max_length: int = 5120
    max_candidates: int = 50
    min_candidates: int = 20
    history_recent: Literal["last", "first"] = "last"
    seed: int = 42
    keep_cited: bool = False  # cited negatives first in the cut order (data.keep_cited_candidates)

    def __post_init__(self) -> None:
        if not 1 <= self.min_candidates <= self.max_candidates:
            raise ValueError(f"data.min_candidates: must be in [1, max_candidates={self.max_candidates}], "
                             f"got {self.min_candidates}")
        if self.history_recent not in ("last", "first"):
            raise ValueError(f"data.history_recent: must be 'last' or 'first', got {self.history_recent!r}")


@dataclass
class TruncationRecord:
    candidates_before: int
    candidates_after: int
    tokens_before: int
    tokens_after: int = 0
    history_before: dict[str, int] = field(default_factory=dict)
    history_dropped: dict[str, int] = field(default_factory=dict)
    header_rewritten: bool = False
    measurements: int = 0  # assembled texts measured exactly (1 unless an estimate was off)
    cited_before: int = 0  # negatives the target cites that the untouched prompt shows
    cited_cut: int = 0  # ... of which the cut removed: the target discusses items the prompt no longer shows

    @property
    def candidates_cut(self) -> bool:
        return self.candidates_after < self.candidates_before

    @property
    def history_lines_dropped(self) -> int:
        return sum(self.history_dropped.values())


@dataclass
class Truncated:
    prompt: str
    parsed: ParsedPrompt
    record: TruncationRecord


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser: a fixed integer bijection, so the order never depends on numpy's RNG streams
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_WORD = re.compile(r"[A-Za-z0-9]+")


def cited_candidates(parsed: ParsedPrompt, target: str) -> frozenset[str]:
    """Candidate ids of ``parsed`` that ``target`` names (as whole words, case-free: ASINs are)."""
    if parsed.candidates is None or not target:
        return frozenset()
    words = {w.upper() for w in _WORD.findall(target)}
    return frozenset(ln.item_id for ln in parsed.candidates.lines
                     if ln.is_item and ln.item_id and ln.item_id.upper() in words)


def negative_priority(candidates: Block, gt_pos: int, seed: int, user_id: str, gt_item_id: str,
                      first: frozenset[str] = frozenset()) -> list[int]:
    """Positions of the negative item lines, the first to keep first.

    One BLAKE2b digest of ``(seed, user_id, gt_item_id)`` per row, mixed with each line's position
    through SplitMix64: deterministic everywhere, and the kept sets for k and k-1 are nested. The
    lines whose id is in ``first`` come before all others (one fixed order, so still nested).
    """
    negs = np.array([i for i, ln in enumerate(candidates.lines) if ln.is_item and i != gt_pos], dtype=np.uint64)
    row_key = np.uint64(stable_key(seed, user_id, gt_item_id))
    keys = _splitmix64(negs * np.uint64(0xD1B54A32D192ED03) ^ row_key)
    order = negs[np.lexsort((negs, keys))].astype(np.int64).tolist()
    if not first:
        return order
    lines = candidates.lines
    return [p for p in order if lines[p].item_id in first] + [p for p in order if lines[p].item_id not in first]


class _Plan:
    """Mutable cut state of one row; ``est`` tracks the token estimate as lines are removed."""

    def __init__(self, parsed: ParsedPrompt, gt_item_id: str, user_id: str, opts: TruncateOptions,
                 line_costs: Callable[[Sequence[str]], Sequence[int]], index: int, cited: frozenset[str]):
        self.parsed, self.opts = parsed, opts
        cands = parsed.candidates
        if cands is None:
            raise BadRowError(index, user_id, "prompt without the candidate section")
        self.cands = cands
        items = [i for i, ln in enumerate(cands.lines) if ln.is_item]
        gt_pos = next((i for i in items if cands.lines[i].item_id == gt_item_id), None)
        if gt_pos is None:
            raise BadRowError(index, user_id, f"ground-truth item {gt_item_id!r} is not among the candidates")
        self.gt_pos = gt_pos
        self.n_cands = len(items)
        self.cited = frozenset(c for c in cited if c != gt_item_id)
        self.priority = negative_priority(cands, gt_pos, opts.seed, user_id, gt_item_id,
                                          self.cited if opts.keep_cited else frozenset())
        self.k = self.n_cands
        self.floor = min(opts.min_candidates, self.n_cands)
        self.hist: dict[str, list[int]] = {}  # kind -> item line positions, oldest first
        for kind in HISTORY_KINDS:
            b = parsed.block(kind)
            if b is not None:
                pos = [i for i, ln in enumerate(b.lines) if ln.is_item]
                self.hist[kind] = pos if opts.history_recent == "last" else pos[::-1]
        self.dropped = {kind: 0 for kind in self.hist}
        texts = [ln.text for ln in cands.lines]
        for kind in self.hist:
            texts.extend(ln.text for ln in parsed.block(kind).lines)
        costs = list(line_costs(texts))
        self.cand_cost = costs[: len(cands.lines)]
        self.hist_cost: dict[str, list[int]] = {}
        off = len(cands.lines)
        for kind in self.hist:
            n = len(parsed.block(kind).lines)
            self.hist_cost[kind] = costs[off: off + n]
            off += n
        self._line_costs = line_costs
        self._header_cost: dict[int, int] = {}
        self.est = 0

    def header(self, k: int) -> str:
        return self.cands.header if k == self.n_cands else rewrite_header_count(self.cands.header, k)

    def header_cost(self, k: int) -> int:
        if k not in self._header_cost:
            self._header_cost[k] = int(self._line_costs([self.header(k)])[0])
        return self._header_cost[k]

    def set_k(self, k: int) -> None:
        for pos in self.priority[k - 1: self.k - 1]:
            self.est -= self.cand_cost[pos]
        self.est += self.header_cost(k) - self.header_cost(self.k)
        self.k = k

    def drop_one(self) -> bool:
        """Remove the next line in cut order; False when nothing more may go."""
        kept = {kind: len(pos) - self.dropped[kind] for kind, pos in self.hist.items()}
        choices = [kind for kind in (SOURCE, TARGET) if kept.get(kind, 0) > 1]
        if choices:
            kind = max(choices, key=lambda k: (kept[k], k == SOURCE))
            self.est -= self.hist_cost[kind][self.hist[kind][self.dropped[kind]]]
            self.dropped[kind] += 1
            return True
        if self.k > self.floor:
            self.set_k(self.k - 1)
            return True
        return False

    def assemble(self) -> ParsedPrompt:
        keep = {self.gt_pos, *self.priority[: self.k - 1]}
        lines = tuple(ln for i, ln in enumerate(self.cands.lines) if not ln.is_item or i in keep)
        out = self.parsed.replace_block(CANDIDATES, header=self.header(self.k), lines=lines)
        for kind, pos in self.hist.items():
            if self.dropped[kind]:
                gone = set(pos[: self.dropped[kind]])
                b = self.parsed.block(kind)
                out = out.replace_block(kind, lines=tuple(ln for i, ln in enumerate(b.lines) if i not in gone))
        return out


def truncate_prompt(parsed: ParsedPrompt, *, gt_item_id: str, user_id: str, measure: Callable[[str], int],
                    line_costs: Callable[[Sequence[str]], Sequence[int]], options: TruncateOptions,
                    index: int = -1, tokens_before: Optional[int] = None,
                    cited: frozenset[str] = frozenset()) -> Truncated:
    """Cut ``parsed`` to fit ``options.max_length``; ``measure(prompt)`` is the exact rendered length.

    ``tokens_before`` is the exact length of the untouched rendering when the caller already has
    it. ``cited``: the candidate ids the training target names (:func:`cited_candidates`), counted
    in the record and, under ``options.keep_cited``, kept first. Raises BadRowError (naming
    ``index`` and ``user_id``) when the row cannot fit.
    """
    plan = _Plan(parsed, gt_item_id, user_id, options, line_costs, index, cited)
    before = measure(parsed.render()) if tokens_before is None else tokens_before
    rec = TruncationRecord(candidates_before=plan.n_cands, candidates_after=plan.n_cands, tokens_before=before,
                           history_before={k: len(v) for k, v in plan.hist.items()},
                           measurements=0)
    plan.est = before
    plan.set_k(min(options.max_candidates, plan.n_cands))
    budget = options.max_length
    while True:
        while plan.est > budget and plan.drop_one():
            pass
        out = plan.assemble()
        text = out.render()
        exact = measure(text)
        rec.measurements += 1
        if exact <= budget:
            break
        if plan.est <= budget and rec.measurements < MAX_MEASUREMENTS:
            plan.est = exact  # the estimate was off: carry the real length into the next round of cuts
            continue
        raise BadRowError(
            index, user_id,
            f"needs {exact} tokens with history cut to one item per section and {plan.k} candidates, over "
            f"data.max_length={budget} (raise --max-length or lower data.min_candidates={options.min_candidates})")
    rec.candidates_after = plan.k
    rec.tokens_after = exact
    rec.history_dropped = dict(plan.dropped)
    rec.header_rewritten = out.candidates.header != parsed.candidates.header
    rec.cited_before = len(plan.cited)
    rec.cited_cut = len(plan.cited - set(out.candidate_ids))
    return Truncated(text, out, rec)
