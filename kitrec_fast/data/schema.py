"""One KitREC row, normalised and validated.

Training rows carry the prompt in ``instruction`` and the target in ``output``; val/test rows
carry the prompt in ``input`` (``instruction`` is then a short label) and an empty or absent
``output``. The prompt is whichever of ``input`` / ``instruction`` holds the candidate section
(``input`` is tried first), so both layouts and the copies with an empty ``input`` work without
a flag.

Every documented row form is accepted:

* ``user_id``, ``user_type``, ``gt_item_id`` and the other row fields at the top level or inside
  a nested ``metadata`` dict (both may be present; they must then agree);
* the ground truth as separate ``gt_item_id`` / ``gt_title`` / ``gt_rating`` fields, or as a
  ``ground_truth`` dict, a JSON string of one, a list holding one dict, or a JSON string of such
  a list (``item_id``, ``title``, ``rating``).

A row is rejected (BadRowError naming the row's 1-based position, its user id and the problem)
when a required field is missing or empty (prompt, user_id, user_type, ground-truth id, and the
target when required), when ``ground_truth`` is not valid JSON, holds other than one entry or
disagrees with ``gt_item_id``, when the prompt has no candidate section, or when the ground-truth
id is not one of the prompt's candidate lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

# BadRowError is also imported from here by kitrec_fast.eval
from kitrec_fast.badrow import BadRowError, UnreadableLine  # noqa: F401
from kitrec_fast.truncate.sections import ParsedPrompt, PromptFormatError, parse_prompt

_KNOWN = {"instruction", "input", "output", "user_id", "user_type", "gt_item_id", "gt_title", "gt_rating",
          "ground_truth", "candidate_set", "target_domain", "source_domain"}


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


def _metadata(raw: dict) -> dict:
    meta = raw.get("metadata")
    if isinstance(meta, str) and meta.strip().startswith("{"):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            return {}
    return meta if isinstance(meta, dict) else {}


class _Fields:
    """Row fields looked up at the top level, then in ``metadata``; the two must not disagree."""

    def __init__(self, raw: dict, index: int):
        self.raw, self.meta, self.index = raw, _metadata(raw), index
        self.user_id: Any = None

    def get(self, name: str) -> Any:
        top, nested = self.raw.get(name), self.meta.get(name)
        if top in (None, ""):
            return nested
        if nested not in (None, "") and top != nested and _text(top).strip() != _text(nested).strip():
            raise BadRowError(self.index, self.user_id, f"{name} {top!r} disagrees with metadata.{name} {nested!r}")
        return top

    def text(self, name: str) -> str:
        return _text(self.get(name)).strip()


def _ground_truth(raw: dict, index: int, user_id: str) -> dict:
    gt = raw.get("ground_truth")
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        return {}
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise BadRowError(index, user_id, f"ground_truth is not valid JSON ({exc})") from None
    if isinstance(gt, list):
        if not gt:
            return {}
        if len(gt) != 1:
            raise BadRowError(index, user_id, f"ground_truth is a list of {len(gt)} entries; expected one")
        gt = gt[0]
    if not isinstance(gt, dict):
        raise BadRowError(index, user_id, f"ground_truth must be an object (or a list of one), got {type(gt).__name__}")
    return gt


def _domain_from_prompt(parsed: ParsedPrompt, label: str) -> str:
    for line in parsed.preamble.split("\n"):
        key = f"- {label} Domain:"
        if line.strip().startswith(key):
            return line.strip()[len(key):].strip()
    return ""


def normalize_row(raw: dict, index: int, require_target: bool) -> KitrecRow:
    """Validate ``raw`` (0-based position ``index``) and return it as a KitrecRow with its parsed prompt."""
    if isinstance(raw, UnreadableLine):
        raise BadRowError(index, None, raw.problem)
    if not isinstance(raw, dict):
        raise BadRowError(index, None, f"row is a {type(raw).__name__}, expected an object")
    fields = _Fields(raw, index)
    user_id = fields.text("user_id")
    if not user_id:
        raise BadRowError(index, None, "missing or empty field 'user_id' (top level or metadata)")
    fields.user_id = user_id
    user_type = fields.text("user_type")
    if not user_type:
        raise BadRowError(index, user_id, "missing or empty field 'user_type' (top level or metadata)")

    gt = _ground_truth(raw, index, user_id)
    gt_id = fields.text("gt_item_id")
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
        raise BadRowError(index, user_id, "missing or empty target field 'output' (training needs the target text)")

    rating = fields.get("gt_rating")
    if rating in (None, ""):
        rating = gt.get("rating")
    try:
        rating = None if rating in (None, "") else float(rating)
    except (TypeError, ValueError):
        raise BadRowError(index, user_id, f"gt_rating {rating!r} is not a number") from None
    title = fields.get("gt_title") or gt.get("title")
    return KitrecRow(
        prompt=prompt,
        target=target,
        user_id=user_id,
        user_type=user_type,
        gt_item_id=gt_id,
        gt_title=None if title is None else _text(title),
        gt_rating=rating,
        candidate_set=fields.text("candidate_set"),
        target_domain=fields.text("target_domain") or _domain_from_prompt(parsed, "Target"),
        source_domain=fields.text("source_domain") or _domain_from_prompt(parsed, "Source"),
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
        index=index,
        parsed=parsed,
    )


def row_user_type(raw: Any) -> str:
    """The user type of a raw row (top level or metadata) without validating the rest; "" if none."""
    if not isinstance(raw, dict):
        return ""
    top = _text(raw.get("user_type")).strip()
    return top or _text(_metadata(raw).get("user_type")).strip()
