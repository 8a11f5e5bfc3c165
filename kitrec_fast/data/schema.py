"""One KitREC row, normalised and validated.

Training rows carry the prompt in ``instruction`` and the target in ``output``; val/test rows
carry the prompt in ``input`` (``instruction`` is then a short label) and may describe the ground
truth in a ``ground_truth`` dict or JSON string. The prompt is whichever of ``input`` /
``instruction`` holds the candidate section (``input`` is tried first), so both layouts and the
copies with an empty ``input`` work without a flag.

A row is rejected (BadRowError naming row index, user id and problem) when a required field is
missing or empty (prompt, user_id, user_type, ground-truth id, and the target when required),
when ``ground_truth`` is not valid JSON or disagrees with ``gt_item_id``, when the prompt has no
candidate section, or when the ground-truth id is not one of the prompt's candidate lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from kitrec_fast.truncate.sections import ParsedPrompt, PromptFormatError, parse_prompt

_KNOWN = {"instruction", "input", "output", "user_id", "user_type", "gt_item_id", "gt_title", "gt_rating",
          "ground_truth", "candidate_set", "target_domain", "source_domain"}
SKIP_HINT = "use --on-bad-row skip (data.on_bad_row=skip) to drop such rows and list them in the report"


class BadRowError(ValueError):
    """A dataset row that cannot be used; names the row index, its user id and the problem."""

    def __init__(self, index: int, user_id: Any, problem: str, hint: str = SKIP_HINT):
        self.index = index
        self.user_id = user_id
        self.problem = problem
        msg = f"row {index} (user_id={user_id!r}): {problem}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


@dataclass
class KitrecRow:
    prompt: str
    target: str
    user_id: str
    user_type: str
    gt_item_id: str
    gt_title: Optional[str] = None
    gt_rating: Optional[float] = None
    candidate_set: str = ""
    target_domain: str = ""
    source_domain: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    index: int = -1
    parsed: Optional[ParsedPrompt] = field(default=None, repr=False, compare=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _ground_truth(raw: dict, index: int, user_id: str) -> dict:
    gt = raw.get("ground_truth")
    if gt is None or gt == "":
        return {}
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise BadRowError(index, user_id, f"ground_truth is not valid JSON ({exc.msg})") from None
    if not isinstance(gt, dict):
        raise BadRowError(index, user_id, f"ground_truth must be an object, got {type(gt).__name__}")
    return gt


def _domain_from_prompt(parsed: ParsedPrompt, label: str) -> str:
    for line in parsed.preamble.split("\n"):
        key = f"- {label} Domain:"
        if line.strip().startswith(key):
            return line.strip()[len(key):].strip()
    return ""


def normalize_row(raw: dict, index: int, require_target: bool) -> KitrecRow:
    """Validate ``raw`` and return it as a KitrecRow (with its parsed prompt attached)."""
    if not isinstance(raw, dict):
        raise BadRowError(index, None, f"row is a {type(raw).__name__}, expected an object")
    user_id = _text(raw.get("user_id")).strip()
    if not user_id:
        raise BadRowError(index, None, "missing or empty field 'user_id'")
    user_type = _text(raw.get("user_type")).strip()
    if not user_type:
        raise BadRowError(index, user_id, "missing or empty field 'user_type'")

    gt = _ground_truth(raw, index, user_id)
    gt_id = _text(raw.get("gt_item_id")).strip()
    gt_dict_id = _text(gt.get("item_id")).strip()
    if gt_id and gt_dict_id and gt_id != gt_dict_id:
        raise BadRowError(index, user_id, f"gt_item_id {gt_id!r} disagrees with ground_truth.item_id {gt_dict_id!r}")
    gt_id = gt_id or gt_dict_id
    if not gt_id:
        raise BadRowError(index, user_id, "missing or empty field 'gt_item_id' (and no ground_truth.item_id)")

    texts = [(name, _text(raw.get(name))) for name in ("input", "instruction")]
    texts = [(name, t) for name, t in texts if t.strip()]
    if not texts:
        raise BadRowError(index, user_id, "missing or empty prompt (neither 'input' nor 'instruction' has text)")
    parsed: Optional[ParsedPrompt] = None
    prompt = ""
    errors = []
    for name, t in texts:
        try:
            parsed, prompt = parse_prompt(t), t
            break
        except PromptFormatError as exc:
            errors.append(f"{name}: {exc}")
    if parsed is None:
        raise BadRowError(index, user_id, "prompt without the candidate section (" + "; ".join(errors) + ")")
    cands = parsed.candidate_ids
    if not cands:
        raise BadRowError(index, user_id, "the candidate section has no item lines with an id")
    if gt_id not in cands:
        raise BadRowError(index, user_id, f"ground-truth item {gt_id!r} is not among the prompt's {len(cands)} candidates")

    target = _text(raw.get("output"))
    if require_target and not target.strip():
        raise BadRowError(index, user_id, "missing or empty target field 'output'")

    rating = raw.get("gt_rating", gt.get("rating"))
    try:
        rating = None if rating in (None, "") else float(rating)
    except (TypeError, ValueError):
        raise BadRowError(index, user_id, f"gt_rating {rating!r} is not a number") from None
    title = raw.get("gt_title") or gt.get("title")
    return KitrecRow(
        prompt=prompt,
        target=target,
        user_id=user_id,
        user_type=user_type,
        gt_item_id=gt_id,
        gt_title=None if title is None else _text(title),
        gt_rating=rating,
        candidate_set=_text(raw.get("candidate_set")).strip(),
        target_domain=_text(raw.get("target_domain")).strip() or _domain_from_prompt(parsed, "Target"),
        source_domain=_text(raw.get("source_domain")).strip() or _domain_from_prompt(parsed, "Source"),
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
        index=index,
        parsed=parsed,
    )
