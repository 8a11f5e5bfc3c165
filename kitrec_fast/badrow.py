"""The error for a dataset row that cannot be used, and how every message names a row.

Data loading, validation and truncation all report rows the same way: by the row's 1-based
position in the input, which for a JSON Lines file is its line number, plus its user id. Code
keeps 0-based positions (``index``); only messages add one. Evaluation predictions carry their
own 0-based ``row_id``, so messages spell out which numbering they use.
"""

from __future__ import annotations

from typing import Any

from kitrec_fast.errors import UserError

SKIP_HINT = "use --on-bad-row skip (data.on_bad_row=skip) to drop such rows and list them in the report"


def row_label(index: int) -> str:
    """``row N (1-based, ...)`` for the row at 0-based position ``index``."""
    return f"row {index + 1} (1-based; the file line for JSONL)"


class BadRowError(UserError):
    """A dataset row that cannot be used; names the row (1-based), its user id and the problem.

    ``index`` stays the 0-based position, as stored in prepared data (``source_index``) and in
    evaluation predictions (``row_id``).
    """

    def __init__(self, index: int, user_id: Any, problem: str, hint: str = SKIP_HINT):
        self.index = index
        self.user_id = user_id
        self.problem = problem
        msg = f"{row_label(index)}, user_id={user_id!r}: {problem}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class UnreadableLine:
    """Stands in the row stream for a JSON Lines line that is not a row (not JSON, not UTF-8), so
    that with ``on_bad_row=skip`` it is skipped and reported like any other bad row, at its own
    position; validation raises ``BadRowError(index, None, problem)`` for it."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem
