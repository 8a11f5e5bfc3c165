import json

import numpy as np
import pytest

from kitrec_fast.config import DataConfig
from kitrec_fast.data.pipeline import load_prepared, prepare, save_prepared
from kitrec_fast.badrow import BadRowError
from kitrec_prompts import make_row

synth = pytest.importorskip("kitrec_fast.data.synth")


@pytest.fixture(scope="module")
def synth_rows():
    return synth.generate_rows(40, seed=3, domain="music", kind="dualft", split="train")


def _check_rows(tok, ds, budget):
    for ex in ds:
        ids, labels = ex["input_ids"], ex["labels"]
        assert ex["length"] == len(ids) == len(labels) <= budget
        start = next(i for i, lab in enumerate(labels) if lab != -100)
        assert ids[start] == 151667 and ids[-1] == 151645 and labels[start:] == ids[start:]
        assert ex["num_trained"] == len(ids) - start


def test_prepare_synthetic(qwen3_tokenizer, synth_rows, tmp_path):
    cfg = DataConfig(dataset="unused", max_length=5120)
    prepared = prepare(cfg, qwen3_tokenizer, rows=synth_rows, verify_rows=8)
    tr, va, rep = prepared.train, prepared.validation, prepared.report
    assert (len(tr), len(va)) == (36, 4)
    assert set(va["user_type"]) == {t for t in synth.USER_TYPES[("dualft", "music")]}
    for col in ("input_ids", "labels", "length", "num_trained", "user_id", "user_type", "gt_item_id",
                "candidate_set", "target_domain"):
        assert col in tr.column_names
    _check_rows(qwen3_tokenizer, tr, 5120)
    _check_rows(qwen3_tokenizer, va, 5120)
    # the stored ids are exactly what the tokenizer makes of the decoded text
    ex = tr[0]
    assert qwen3_tokenizer(qwen3_tokenizer.decode(ex["input_ids"]), add_special_tokens=False)["input_ids"] == ex["input_ids"]
    prompt_text = qwen3_tokenizer.decode(ex["input_ids"])
    assert "(50 items):" in prompt_text and ex["gt_item_id"] in prompt_text
    assert rep["rows"]["train"] == {"in": 36, "out": 36} and rep["rows"]["skipped"] == 0
    assert rep["truncation"]["rows_candidates_cut"] == 40
    assert rep["tokens"]["after"]["max"] <= 5120 < rep["tokens"]["before"]["max"]
    assert rep["tokenization"]["rows_verified_whole"] == 8
    assert sum(d["train"]["out"] for d in rep["per_user_type"].values()) == 36

    out = save_prepared(prepared, tmp_path / "prep")
    loaded = load_prepared(out)
    assert loaded.train["input_ids"][3] == tr["input_ids"][3] and len(loaded.validation) == 4
    assert json.loads((out / "report.json").read_text())["rows"]["validation"]["out"] == 4


def test_prepare_small_budget_cuts_history(qwen3_tokenizer, synth_rows):
    cfg = DataConfig(dataset="unused", max_length=3500, min_candidates=10, val_fraction=0.0, on_bad_row="skip")
    prepared = prepare(cfg, qwen3_tokenizer, rows=synth_rows[:12], verify_rows=12)
    rep = prepared.report
    assert rep["truncation"]["rows_history_cut"] > 0
    _check_rows(qwen3_tokenizer, prepared.train, 3500)
    assert len(prepared.train) + rep["rows"]["skipped"] == 12


def test_bad_rows_error_or_skip(qwen3_tokenizer):
    rows = [make_row(user_id=f"U{i}", user_type=("a", "b")[i % 2], words=4) for i in range(10)]
    rows[3]["gt_item_id"] = "NOPE0000"
    rows[6] = make_row(user_id="UHUGE", user_type="a", target="<think>\n" + "word " * 6000 + "\n</think>\n{}")
    with pytest.raises(BadRowError, match=r"row 4 \(1-based; the file line for JSONL\), user_id='U3'"):
        prepare(DataConfig(dataset="unused"), qwen3_tokenizer, rows=rows)
    prepared = prepare(DataConfig(dataset="unused", on_bad_row="skip", val_fraction=0.2), qwen3_tokenizer, rows=rows)
    rep = prepared.report
    skipped = {s["row"]: s for s in rep["skipped"]}
    assert set(skipped) == {4, 7}  # 1-based, as in error messages
    assert skipped[4]["user_id"] == "U3" and skipped[4]["stage"] == "validate" and "not among" in skipped[4]["problem"]
    assert skipped[7]["user_id"] == "UHUGE" and skipped[7]["stage"] == "truncate"
    assert rep["rows"]["valid"] == 9 and len(prepared.train) + len(prepared.validation) == 8
    assert 3 not in prepared.train["source_index"] and 6 not in prepared.train["source_index"]


def test_save_and_load_with_an_empty_validation_split(qwen3_tokenizer, synth_rows, tmp_path):
    # val_fraction 0 leaves no validation rows; the saved directory must still load back.
    prepared = prepare(DataConfig(dataset="unused", val_fraction=0.0), qwen3_tokenizer, rows=synth_rows[:4],
                       verify_rows=0)
    assert len(prepared.validation) == 0
    loaded = load_prepared(save_prepared(prepared, tmp_path / "p"))
    assert len(loaded.train) == 4 and len(loaded.validation) == 0
    assert loaded.validation.features == loaded.train.features


def test_prepare_documented_training_rows_with_nested_metadata(qwen3_tokenizer):
    from kitrec_documented import eval_row, training_row_nested

    rows = [training_row_nested(f"AMETA{i}") for i in range(4)]
    prepared = prepare(DataConfig(dataset="unused", val_fraction=0.25), qwen3_tokenizer, rows=rows, verify_rows=4)
    got = sorted(list(prepared.train["user_id"]) + list(prepared.validation["user_id"]))
    assert got == [f"AMETA{i}" for i in range(4)]
    assert set(prepared.train["target_domain"]) == {"Movies & TV"} and set(prepared.train["candidate_set"]) == {"B"}
    _check_rows(qwen3_tokenizer, prepared.train, 5120)
    # an evaluation row has no target: training refuses it, naming the 1-based row
    with pytest.raises(BadRowError, match=r"row 5 \(1-based.*user_id='AEVAL1'.*'output'"):
        prepare(DataConfig(dataset="unused"), qwen3_tokenizer, rows=rows + [eval_row("json_list")])


def test_whole_text_fallback_keeps_every_row_of_a_partial_last_block(qwen3_tokenizer, synth_rows, monkeypatch):
    """A tokenizer whose chunked counts are not exact is tokenized whole, row by row (the renderer's
    ``chunked`` False, as its probe sets it). 10 rows in blocks of 4 end in a partial block of 2:
    every row must come out, with the ids the chunked path gives."""
    import copy

    from kitrec_fast.data import pipeline
    from kitrec_fast.render.chat import get_renderer

    monkeypatch.setattr(pipeline, "WARM_BLOCK", 4)
    cfg = DataConfig(dataset="unused", max_length=3072, val_fraction=0.2)
    whole_tok = copy.deepcopy(qwen3_tokenizer)  # its own renderer: the shared one keeps its cache
    get_renderer(whole_tok).chunked = False
    whole = prepare(cfg, whole_tok, rows=synth_rows[:10], verify_rows=10)
    chunked = prepare(cfg, qwen3_tokenizer, rows=synth_rows[:10], verify_rows=0)
    assert whole.report["tokenization"]["chunked"] is False and chunked.report["tokenization"]["chunked"] is True

    def by_row(prepared):
        return {ex["source_index"]: ex["input_ids"] for split in (prepared.train, prepared.validation) for ex in split}

    assert sorted(by_row(whole)) == list(range(10))
    assert by_row(whole) == by_row(chunked)
