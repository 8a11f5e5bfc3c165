"""Batches of pre-tokenized rows: the project's labels pass through untouched.

Both backends use this collator, so for the same rows they see identical ``input_ids`` and
``labels``. Padding (right side, ``<|endoftext|>``) gets label -100 and attention mask 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class KitrecCollator:
    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("empty batch")
        ids = [list(r["input_ids"]) for r in rows]
        labels = [list(r["labels"]) for r in rows]
        for i, (a, b) in enumerate(zip(ids, labels)):
            if len(a) != len(b):
                raise ValueError(f"batch row {i}: {len(a)} input ids but {len(b)} labels")
        if self.padding_free:
            # One row; position ids restart per sequence so attention stays block-diagonal, and
            # each sequence's first label is dropped so no token predicts across a boundary.
            flat_ids, flat_labels, pos = [], [], []
            for a, b in zip(ids, labels):
                flat_ids += a
                flat_labels += [IGNORE_INDEX] + b[1:]
                pos += list(range(len(a)))
            return {"input_ids": torch.tensor([flat_ids]), "labels": torch.tensor([flat_labels]),
                    "position_ids": torch.tensor([pos])}
        longest = max(len(a) for a in ids)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(ids), longest), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, (a, b) in enumerate(zip(ids, labels)):
            input_ids[i, : len(a)] = torch.tensor(a)
            label_t[i, : len(b)] = torch.tensor(b)
            mask[i, : len(a)] = 1
        return {"input_ids": input_ids, "labels": label_t, "attention_mask": mask}
