"""Rows to evaluate: selection, then normalising, optional truncation and tokenizing as training does."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

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
    prompt_ids: list[int]


def select_rows(raw: Sequence[dict], user_types: Sequence[str], limit: Optional[int]) -> list[int]:
    """Indices of the rows to evaluate: user-type filter first, then the first ``limit``."""
    from kitrec_fast.data.schema import row_user_type  # test rows may keep it in a nested metadata dict

    wanted = set(user_types)
    if wanted:
        present = {row_user_type(r) for r in raw}
        for t in user_types:  # a typo would otherwise select no row of that type, silently
            if t not in present:
                raise GenerateError(f"--user-type: no row has user type {t!r}{did_you_mean(t, present)}; "
                                    f"the dataset holds {', '.join(sorted(p for p in present if p)) or 'none'}")
    idx = [i for i, r in enumerate(raw) if not wanted or row_user_type(r) in wanted]
    return idx[:limit] if limit is not None else idx


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
        from kitrec_fast.render.chat import render_generation_prompt
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
                               prompt_ids=render_generation_prompt(self.tokenizer, prompt)))
        return out

    def _bad(self, exc) -> None:
        if self.on_bad_row == "error":
            raise GenerateError(str(exc)) from None
        self._skipped[exc.index] = {"row_id": exc.index, "user_id": exc.user_id, "problem": exc.problem}
