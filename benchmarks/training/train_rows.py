"""The rows a benchmark worker trains on: fixed-length random-token rows, their dataset, a record
of every batch (to prove both backends saw the same ones), a sequential sampler, and a saved
starting adapter."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

# Qwen3's first special-token id: random token ids stay below it so no row contains <|im_end|> etc.
FIRST_SPECIAL_ID = 151643


def fixed_length_rows(n: int, seq_len: int, trained_fraction: float, seed: int, vocab: int) -> dict[str, list]:
    """``n`` rows of exactly ``seq_len`` random tokens; the last ``trained_fraction`` carry labels.

    A KitREC row is a long masked prompt followed by the trained answer; this keeps that shape
    (prompt first, answer last) so the chunked loss does the same amount of LM-head work.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_trained = max(2, min(seq_len - 1, round(trained_fraction * seq_len)))
    high = min(vocab, FIRST_SPECIAL_ID)
    ids = rng.integers(0, high, size=(n, seq_len), dtype=np.int64)
    labels = ids.copy()
    labels[:, : seq_len - n_trained] = -100
    return {"input_ids": ids.tolist(), "labels": labels.tolist(), "length": [seq_len] * n}


def build_dataset(data: dict[str, Any], n: int, seed: int, vocab: int):
    """The rows of a config, in the exact order they will be trained on."""
    from datasets import Dataset

    if data["mode"] == "fixed":
        return Dataset.from_dict(fixed_length_rows(n, int(data["seq_len"]), float(data["trained_fraction"]),
                                                   seed, vocab))
    if data["mode"] == "pipeline":
        from datasets import load_from_disk

        train = load_from_disk(str(Path(data["dir"]) / "train"))
        order = list(data["order"])
        # Fewer prepared rows than the run needs: cycle through them in the same fixed order.
        picks = [order[i % len(order)] for i in range(n)]
        return train.select(picks).select_columns(["input_ids", "labels", "length"])
    raise ValueError(f"data.mode: expected fixed or pipeline, got {data['mode']!r}")


class BatchRecorder:
    """Wraps the trainer's collator: counts tokens three ways and fingerprints every batch.

    Calls arrive in data order (the dataloader may fetch one batch ahead, but the i-th call is
    always the i-th step's batch), so ``batches[i]`` belongs to step i.
    """

    def __init__(self, inner: Callable):
        self.inner = inner
        self.batches: list[dict[str, Any]] = []

    def __call__(self, rows):
        batch = self.inner(rows)
        ids, labels = batch["input_ids"], batch["labels"]
        mask = batch.get("attention_mask")
        h = hashlib.sha1(ids.cpu().numpy().tobytes())
        h.update(labels.cpu().numpy().tobytes())
        self.batches.append({
            "all": int(ids.numel()),
            "nonpad": int(mask.sum()) if mask is not None else int(ids.numel()),
            # position t is trained on labels[t+1]: the first label of a row never counts
            "trained": int((labels[..., 1:] != -100).sum()),
            "samples": len(rows),
            "seq_lens": [len(r["input_ids"]) for r in rows],
            "sha1": h.hexdigest()[:16],
        })
        return batch


def load_initial_adapter(loaded, adapter_dir: str) -> None:
    """Overwrite the backend's freshly drawn LoRA weights with a saved adapter's (parity runs).

    Both backends then start from the very same A and B matrices instead of each drawing its own.
    Every LoRA weight of the model must be in the file, and every tensor of the file must land.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(loaded.model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise RuntimeError(f"initial adapter does not match the model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")
    loaded.init_adapter = str(adapter_dir)


def sequential_sampler(trainer) -> None:
    """Train in dataset order (the harness already fixed it identically for both backends)."""
    from torch.utils.data import SequentialSampler

    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)
