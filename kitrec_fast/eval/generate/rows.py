"""Rows to evaluate: selection, then normalising, optional truncation and tokenizing as training does."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from kitrec_fast.errors import did_you_mean
from kitrec_fast.eval.generate.options import GenerateError


@dataclass
class EvalRow:
    """One pending row, ready for generation."""

    row_id: int
    user_id: str
    user_type: str
    gt_item_id: str
    gt_rating: Optional[float]
    candidate_ids: list[str]
    prompt_ids: Sequence[int]  # the generation prompt (int32 array when built, list when read back)


def iter_selected(raw: Iterable[dict], user_types: Sequence[str], limit: Optional[int],
                  limit_per_type: Optional[int] = None) -> Iterator[tuple[int, dict]]:
    """``(index, row)`` of the rows to evaluate, streaming: user-type filter first, then the first
    ``limit_per_type`` rows of each type, then the first ``limit`` of those.

    A requested user type that no row has is an error (a typo would otherwise select nothing of that
    type, silently); the rows are read on past the limits only until every requested type was seen."""
    from kitrec_fast.data.schema import row_user_type  # test rows may keep it in a nested metadata dict

    wanted = set(user_types)
    present: set = set()
    per_type: dict = {}
    taken = 0
    for i, r in enumerate(raw):
        kind = row_user_type(r) if wanted or limit_per_type is not None else None
        present.add(kind)
        full = limit is not None and taken >= limit
        # a requested type at its cap was seen, so both stops leave the type check below satisfied
        capped = bool(wanted) and limit_per_type is not None and all(
            per_type.get(t, 0) >= limit_per_type for t in wanted)
        if (full and wanted <= present) or capped:
            return
        if full or (wanted and kind not in wanted) or (
                limit_per_type is not None and per_type.get(kind, 0) >= limit_per_type):
            continue
        per_type[kind] = per_type.get(kind, 0) + 1
        taken += 1
        yield i, r
    for t in user_types:
        if t not in present:
            raise GenerateError(f"--user-type: no row has user type {t!r}{did_you_mean(t, present - {None})}; "
                                f"the dataset holds {', '.join(sorted(p for p in present if p)) or 'none'}")


def select_rows(raw: Sequence[dict], user_types: Sequence[str], limit: Optional[int],
                limit_per_type: Optional[int] = None) -> list[int]:
    """Indices of the rows to evaluate: user-type filter first, then the per-type and total limits."""
    return [i for i, _ in iter_selected(raw, user_types, limit, limit_per_type)]


class RowBuilder:
    """Normalise, (optionally) truncate and tokenize rows exactly as the training code does.

    ``max_candidates`` None keeps every candidate (the paper's protocol); a number cuts the
    candidates with the training truncation (ground truth kept, same per-row digest and seed).
    """

    def __init__(self, tokenizer: Any, cfg, max_candidates: Optional[int], max_prompt_tokens: Optional[int],
                 on_bad_row: str):
        from kitrec_fast.render.chat import get_renderer

        self.tokenizer = tokenizer
        self.renderer = get_renderer(tokenizer)
        self.cfg = cfg
        self.max_candidates = max_candidates
        self.max_prompt_tokens = max_prompt_tokens
        self.on_bad_row = on_bad_row
        self._skipped: dict[int, dict] = {}  # by row id: a row built twice is reported once

    @property
    def skipped(self) -> list[dict]:
        return [self._skipped[k] for k in sorted(self._skipped)]

    def _options(self, n_candidates: int):
        from kitrec_fast.truncate.truncate import TruncateOptions

        k = self.max_candidates or n_candidates
        return TruncateOptions(
            # No token budget unless asked for: only --max-prompt-tokens cuts history.
            max_length=self.max_prompt_tokens or sys.maxsize,
            max_candidates=k,
            min_candidates=min(self.cfg.data.min_candidates, k),
            history_recent=self.cfg.data.history_recent,
            seed=self.cfg.data.split_seed,
        )

    def build(self, indices: Sequence[int], raws: Sequence[dict]) -> list[EvalRow]:
        """Rows ready for generation (bad rows raise or, under ``skip``, are recorded and left out)."""
        from kitrec_fast.data.schema import BadRowError, normalize_row
        from kitrec_fast.truncate.truncate import truncate_prompt

        normalized = []
        for index, raw in zip(indices, raws):
            try:
                normalized.append(normalize_row(raw, index, require_target=False))
            except BadRowError as exc:
                self._bad(exc)
        r = self.renderer
        # One batched tokenizer call for every distinct text chunk of the window (cached after).
        r.warm(r.generation_text(row.prompt) for row in normalized)
        out = []
        for row in normalized:
            prompt, parsed = row.prompt, row.parsed
            n_cands = len(parsed.candidate_ids)
            if (self.max_candidates and n_cands > self.max_candidates) or self.max_prompt_tokens:
                try:
                    tr = truncate_prompt(parsed, gt_item_id=row.gt_item_id, user_id=row.user_id,
                                         measure=lambda p: r.count(r.generation_text(p)),
                                         line_costs=r.line_costs, options=self._options(n_cands),
                                         index=row.index)
                except BadRowError as exc:
                    self._bad(exc)
                    continue
                prompt, parsed = tr.prompt, tr.parsed
            out.append(EvalRow(row_id=row.index, user_id=row.user_id, user_type=row.user_type,
                               gt_item_id=row.gt_item_id, gt_rating=row.gt_rating,
                               candidate_ids=list(parsed.candidate_ids),
                               # render_generation_prompt without its list copy: same renderer, same ids
                               prompt_ids=r.generation_prompt(prompt)))
        return out

    def _bad(self, exc) -> None:
        if self.on_bad_row == "error":
            raise GenerateError(str(exc)) from None
        self._skipped[exc.index] = {"row_id": exc.index, "user_id": exc.user_id, "problem": exc.problem}


class PromptStore:
    """Built rows kept until generation: metadata in memory, prompt ids in an unlinked temporary file.

    Every pending row is built exactly once, before the engine starts (its length sizes the
    engine). 30,000 test prompts of ~7k tokens are ~840 MB of int32 ids: they go to disk, so the
    process's memory holds only the rows' metadata (candidate ids, user) and one batch of ids at a
    time. The file has no name (``TemporaryFile``): a killed process leaves nothing behind.
    """

    def __init__(self, directory: Path):
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".prompts-")
        self._end = 0
        self.rows: list[EvalRow] = []  # prompt_ids emptied; see _where
        self._where: list[tuple[int, int]] = []  # (byte offset, tokens) per row

    def add(self, rows: Sequence[EvalRow]) -> None:
        if not rows:
            return
        ids = [np.asarray(r.prompt_ids, dtype=np.int32) for r in rows]
        data = np.concatenate(ids).tobytes()
        os.pwrite(self._file.fileno(), data, self._end)
        for r, a in zip(rows, ids):
            self._where.append((self._end, len(a)))
            self._end += a.nbytes
            r.prompt_ids = []
            self.rows.append(r)

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, i: int) -> int:
        return self._where[i][1]

    @property
    def tokens(self) -> int:
        return self._end // 4

    @property
    def longest(self) -> int:
        return max((n for _, n in self._where), default=0)

    def order(self, by_length: bool) -> list[int]:
        """Row positions in generation order: longest prompt first (ties by row id), or as built."""
        if not by_length:
            return list(range(len(self.rows)))
        return sorted(range(len(self.rows)), key=lambda i: (-self._where[i][1], self.rows[i].row_id))

    def get(self, i: int) -> EvalRow:
        """Row ``i`` with its prompt ids read back."""
        offset, n = self._where[i]
        ids = np.frombuffer(os.pread(self._file.fileno(), 4 * n, offset), dtype=np.int32).tolist()
        r = self.rows[i]
        return EvalRow(r.row_id, r.user_id, r.user_type, r.gt_item_id, r.gt_rating, r.candidate_ids, ids)

    def close(self) -> None:
        self._file.close()
