"""``eval loss``: the run's validation rows, the training masking, and losses checked against full logits.

Runs in-process with the peft backend (the tiny fp32 model + a random LoRA adapter); skipped if
another test already imported unsloth into this pytest process, since the baseline refuses to
share a process with it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from kitrec_fast.eval.eval_loss import RowLoss, aggregate, select_validation


@pytest.fixture(scope="module")
def run_dir(lora_run_dir) -> Path:
    if "unsloth" in sys.modules:
        pytest.skip("unsloth was imported into this pytest process; the peft baseline cannot run here")
    return lora_run_dir


@pytest.fixture(scope="module")
def tokenizer():
    from kitrec_fast.render.tokenizer import load_tokenizer

    return load_tokenizer("offline:qwen3")


def test_aggregate_weights_rows_by_tokens():
    rows = [RowLoss(0, "u", "a", tokens=10, loss_sum=20.0, nll_sum=10.0),
            RowLoss(1, "v", "b", tokens=30, loss_sum=30.0, nll_sum=30.0)]
    agg = aggregate(rows)
    assert agg["tokens"] == 40 and agg["loss"] == pytest.approx(50 / 40) and agg["nll"] == pytest.approx(1.0)
    assert agg["perplexity"] == pytest.approx(math.e)  # not the mean of per-row means (1.5)
    assert math.isnan(aggregate([])["nll"])


def test_validation_rows_are_the_runs_validation_split(run_dir, tokenizer):
    # The command prepares only the held-out rows; they must be token for token the rows the
    # trainer evaluated on (the full prepare of the run's DataConfig).
    from kitrec_fast.artifacts.rundir import read_resolved_config
    from kitrec_fast.data.pipeline import prepare

    cfg = read_resolved_config(run_dir)
    data_cfg, raw_rows, row_ids, mode = select_validation(cfg, cfg.data.dataset, cfg.data.dataset_split, "auto")
    assert mode == "validation" and len(raw_rows) == 4
    ours = prepare(data_cfg, tokenizer, rows=raw_rows, candidate_seed=cfg.data.split_seed).train
    full = prepare(cfg.data, tokenizer).validation
    assert [row_ids[i] for i in ours["source_index"]] == full["source_index"]
    assert ours["input_ids"] == full["input_ids"]
    assert ours["labels"] == full["labels"]
    assert sorted(set(full["user_type"])) == sorted(set(ours["user_type"])) and len(set(ours["user_type"])) == 4


def reference_losses(run_dir: Path, tokenizer, eps: float) -> dict[str, tuple[float, float, int]]:
    """Per user type (and overall): smoothed and plain CE sums from full logits + F.cross_entropy."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kitrec_fast.artifacts.rundir import read_resolved_config
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.pipeline import prepare

    cfg = read_resolved_config(run_dir)
    val = prepare(cfg.data, tokenizer).validation
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.name))
    model = PeftModel.from_pretrained(model, str(run_dir / "adapter")).eval()
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for row in val:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"])
            first = int((labels != -100).nonzero()[0])  # first trained token
            # Logits of every position from first-1 on (the ones that predict trained tokens):
            # the model's own LM head over the full vocabulary, no chunking involved.
            logits = model(input_ids=ids, logits_to_keep=len(labels) - first + 1).logits[0, :-1].float()
            target = labels[first:]
            assert logits.shape[0] == target.shape[0]
            smooth = F.cross_entropy(logits, target, label_smoothing=eps, reduction="sum").item()
            plain = F.cross_entropy(logits, target, reduction="sum").item()
            for key in ("overall", row["user_type"]):
                acc = sums.setdefault(key, [0.0, 0.0, 0])
                acc[0] += smooth
                acc[1] += plain
                acc[2] += int(target.numel())
    return {k: (a / n, b / n, n) for k, (a, b, n) in sums.items()}


def test_eval_loss_matches_full_logit_cross_entropy(run_dir, tokenizer, tmp_path):
    from kitrec_fast.cli import main

    out = tmp_path / "eval_loss.json"
    assert main(["eval", "loss", "--run", str(run_dir), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rows_mode"] == "validation" and report["label_smoothing"] == 0.1
    ref = reference_losses(run_dir, tokenizer, eps=0.1)
    groups = {"overall": report["overall"], **report["per_user_type"]}
    assert set(groups) == set(ref)
    for name, g in groups.items():
        loss, nll, tokens = ref[name]
        assert g["tokens"] == tokens, name
        assert g["loss"] == pytest.approx(loss, rel=1e-5), name
        assert g["nll"] == pytest.approx(nll, rel=1e-5), name
        assert g["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5), name
        assert g["loss"] > g["nll"]  # smoothing adds the (larger) uniform term for a near-uniform model
    assert len(report["per_row"]) == 4 and {r["row_id"] for r in report["per_row"]} <= set(range(8))


def test_eval_loss_on_another_dataset_uses_every_row(run_dir, tmp_path):
    # A dedicated validation set (here: the SingleFT sample) is scored whole, with the run's
    # truncation settings; --limit caps the rows.
    from kitrec_fast.eval.eval_loss import run_eval_loss

    report = run_eval_loss(run_dir, dataset="embedded:singleft_music", split="train", limit=3,
                           output=tmp_path / "other.json")
    assert report["rows_mode"] == "all" and report["overall"]["rows"] == 3
    assert list(report["per_user_type"]) == ["source_only_music"]
    assert [r["row_id"] for r in report["per_row"]] == [0, 1, 2]
    assert (tmp_path / "other.json").is_file()


def test_eval_loss_on_a_set_without_targets_says_once_what_it_needs(run_dir, tmp_path, capsys):
    # Test/val sets carry no `output`: one message naming what works, not one rejection per row.
    from kitrec_fast.cli import main

    assert main(["eval", "loss", "--run", str(run_dir), "--dataset", "embedded:test_music", "--split", "test",
                 "--output", str(tmp_path / "x.json")]) == 2
    out = capsys.readouterr().out
    assert "none of the 50 rows of embedded:test_music (test) has a target" in " ".join(out.split())
    assert "kitrec-fast eval loss --run RUN_DIR" in " ".join(out.split())
    assert "row 1 " not in out and not (tmp_path / "x.json").exists()


def test_eval_loss_leaves_out_rows_without_a_target_and_scores_the_rest(run_dir, tmp_path):
    from kitrec_fast.data.load import load_raw
    from kitrec_fast.eval.eval_loss import run_eval_loss

    mixed = load_raw("embedded:singleft_music", "train")[:2] + load_raw("embedded:test_music", "test")[:1]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    report = run_eval_loss(run_dir, dataset=str(path), split="train", output=tmp_path / "m.json")
    assert report["rows_mode"] == "all" and report["overall"]["rows"] == 2
    assert [r["row_id"] for r in report["per_row"]] == [0, 1]
