"""Scoring protocols: how a parsed answer becomes the ranked list the metrics read.

``kitrec`` (the default) is how the KitREC paper's numbers were computed: the answer's ids in
emitted order, matched to the candidates case-insensitively; ids that are not candidates are
dropped and the list closes up; a repeated id keeps its place, so the ground truth's position
is that of its first occurrence. ``strict`` keeps every emitted entry in its position: an
invalid or repeated id occupies its rank. It answers "where did the model put the right item in
what it actually wrote", which ``kitrec`` flatters when a model pads its list with invented
ids. Case never matters in either (ASINs are case-free).

Shared by both: a row that yields no list scores 0 on every metric and stays in every
denominator; the row's confidence is that of its first valid entry, and a confidence of 0
counts as a parse error for calibration only.
"""

from __future__ import annotations

from kitrec_fast.errors import UserError
from kitrec_fast.eval.metrics import gt_position
from kitrec_fast.eval.parse import ParseResult

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "ProtocolError", "check_protocol", "gt_position", "ranked_list"]

DEFAULT_PROTOCOL = "kitrec"
PROTOCOLS = {
    "kitrec": "KitREC paper: emitted order, case-insensitive ids, invalid ids dropped (the list closes up), "
              "repeats keep their positions",
    "strict": "every emitted entry occupies its rank, invalid or repeated; case-insensitive ids",
}


class ProtocolError(UserError):
    """An unknown protocol name."""


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise ProtocolError(f"--protocol: must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return name


def ranked_list(parsed: ParseResult, protocol: str) -> list[str | None]:
    """The ranked list under ``protocol``; ``None`` marks a strict-mode slot no candidate fills."""
    if check_protocol(protocol) == "kitrec":
        return list(parsed.ranked_ids)
    return [e.item_id for e in parsed.entries]
