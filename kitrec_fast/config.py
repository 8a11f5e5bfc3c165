"""Typed configuration: one dataclass per stage, checked in ``__post_init__``.

A recipe YAML (top-level ``recipes/``) maps one-to-one onto ``RunConfig``: its top-level keys are
``data``, ``model``, ``lora`` and ``train`` plus the scalar run fields. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


def _check(cond: bool, option: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{option}: {msg}")


def _choice(value: Any, option: str, choices: tuple) -> None:
    _check(value in choices, option, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass
class DataConfig:
    """Where the rows come from and how they become token ids and labels."""

    dataset: str = field(default="Younggooo/kitrec-dualft_music-seta", metadata={
        "help": "Hub dataset id, or a local .jsonl/.json/.parquet file (.gz allowed), or 'embedded:NAME'."})
    dataset_split: str = field(default="train", metadata={"help": "Split to load from a Hub dataset."})
    tokenizer: Optional[str] = field(default=None, metadata={
        "help": "Tokenizer id or directory; defaults to the model's. 'offline:qwen3' builds the offline one."})
    val_fraction: float = field(default=0.1, metadata={"help": "Validation share, stratified by user_type."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified split."})
    max_length: int = field(default=5120, metadata={
        "help": "Token budget of the whole rendered conversation (prompt + target + special tokens)."})
    max_candidates: int = field(default=50, metadata={
        "help": "Candidates kept in every prompt (the ground truth always among them)."})
    min_candidates: int = field(default=20, metadata={
        "help": "Floor for further candidate cuts when history cuts are not enough."})
    history_recent: Literal["last", "first"] = field(default="last", metadata={
        "help": "Which end of a history list is the most recent item (the other end is cut first)."})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={
        "help": "A row that fails validation or cannot fit: stop with an error, or skip it and report it."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N rows (debugging)."})
    num_proc: int = field(default=1, metadata={"help": "Worker processes for tokenization."})

    def __post_init__(self):
        _check(bool(self.dataset), "data.dataset", "must not be empty")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(self.max_length >= 256, "data.max_length", f"must be >= 256, got {self.max_length}")
        _check(self.max_candidates >= 1, "data.max_candidates", f"must be >= 1, got {self.max_candidates}")
        _check(1 <= self.min_candidates <= self.max_candidates, "data.min_candidates",
               f"must be in [1, max_candidates={self.max_candidates}], got {self.min_candidates}")
        _choice(self.history_recent, "data.history_recent", ("last", "first"))
        _choice(self.on_bad_row, "data.on_bad_row", ("error", "skip"))
        _check(self.limit is None or self.limit > 0, "data.limit", f"must be positive, got {self.limit}")
        _check(self.num_proc >= 1, "data.num_proc", f"must be >= 1, got {self.num_proc}")
