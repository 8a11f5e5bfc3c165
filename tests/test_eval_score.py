"""Scoring reports, run comparison and the `eval` CLI on synthetic prediction files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kitrec_fast.cli import main
from kitrec_fast.eval.compare import compare_runs, holm, paired_t_test
from kitrec_fast.eval.metrics import metric_names
from kitrec_fast.eval.score import load_predictions, score_predictions, write_report

NAMES = metric_names()
TYPES = ("overlapping_books_music", "cold_start_2core_music", "source_only_music")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def answer(ids: list[str], confs: list[float] | None = None) -> str:
    confs = confs or [9.0 - 0.5 * i for i in range(len(ids))]
    items = [{"rank": i + 1, "item_id": x, "confidence_score": c} for i, (x, c) in enumerate(zip(ids, confs))]
    return "<think>\n**Candidate Evaluation:** ...\n</think>\n```json\n" + json.dumps(items) + "\n```"


def record(row_id: int, user_type: str, gt_pos: int | None, *, rating: float = 4.0,
           top_conf: float = 8.0, ids_override: list[str] | None = None) -> dict:
    """A row whose answer ranks 10 candidates with the ground truth at ``gt_pos`` (1-based)."""
    cands = [f"B{row_id:04d}{j:05d}" for j in range(20)]
    gt = cands[0]
    ranked = cands[1:11]
    if gt_pos is not None:
        ranked.insert(gt_pos - 1, gt)
        ranked = ranked[:10]
    ids = ids_override if ids_override is not None else ranked
    confs = [top_conf] + [5.0] * (len(ids) - 1)
    return {"row_id": row_id, "user_id": f"U{row_id}", "user_type": user_type, "gt_item_id": gt,
            "gt_rating": rating, "candidate_ids": cands, "raw_text": answer(ids, confs),
            "gen_seconds": 2.0, "new_tokens": 400}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def perfect_records(n_per_type: int = 20) -> list[dict]:
    rows = []
    for t, user_type in enumerate(TYPES):
        for i in range(n_per_type):
            rating = float(1 + (i % 5))
            rows.append(record(t * 1000 + i, user_type, 1, rating=rating, top_conf=2 * rating))
    return rows


def model_records(hit_prob: float, seed: int, n: int = 300) -> list[dict]:
    """A synthetic model that puts the ground truth first with probability ``hit_prob``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        u = rng.random()
        pos = 1 if u < hit_prob else (None if u > 0.9 else int(rng.integers(2, 11)))
        rows.append(record(i, TYPES[i % 3], pos))
    return rows


def test_perfect_file_scores_one_everywhere(tmp_path: Path) -> None:
    report = score_predictions(write_jsonl(tmp_path / "p.jsonl", perfect_records()), n_bootstrap=200)
    for group in report.groups().values():
        assert group.metrics == {m: 1.0 for m in NAMES}
        assert all(group.ci[m] == (1.0, 1.0) for m in NAMES)
        assert group.rates["parse_failure_rate"] == 0.0
        assert group.rates["invalid_item_rate"] == 0.0
        assert group.calibration["mae"] == 0.0 and group.calibration["rmse"] == 0.0
    assert set(report.by_user_type) == set(TYPES)
    assert report.overall.n == 60


def test_only_invalid_ids_scores_zero_with_full_invalid_rate() -> None:
    rows = [record(i, TYPES[i % 3], None, ids_override=[f"X{i}NOTACAND{j}" for j in range(10)]) for i in range(30)]
    report = score_predictions(rows, n_bootstrap=100)
    g = report.overall
    assert g.metrics == {m: 0.0 for m in NAMES}
    assert g.rates["invalid_item_rate"] == 1.0
    assert g.rates["rows_with_invalid_rate"] == 1.0
    assert g.rates["parse_failure_rate"] == 0.0
    assert g.counts["invalid_items"] == 300 and g.counts["items_ranked"] == 0
    assert g.calibration["n"] == 0 and g.calibration["mae"] is None


def test_grouping_counts_and_hand_worked_means() -> None:
    rows = [
        record(1, "A", 1, rating=5.0, top_conf=8.0),  # conf/2 = 4 vs 5 -> error 1
        record(2, "A", 3, rating=3.0, top_conf=6.0),  # error 0
        record(3, "B", None),
        {**record(4, "B", 1), "raw_text": "<think>\nstill thinking about B0004"},  # parse failure
    ]
    report = score_predictions(rows, n_bootstrap=100)
    a, b = report.by_user_type["A"], report.by_user_type["B"]
    assert a.n == 2 and b.n == 2
    assert a.metrics["hit@1"] == 0.5 and a.metrics["hit@5"] == 1.0
    assert a.metrics["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert a.metrics["ndcg@5"] == pytest.approx((1 + 0.5) / 2)
    assert a.calibration == {"mae": 0.5, "rmse": pytest.approx(math.sqrt(0.5)), "n": 2, "confidence_zero": 0}
    assert b.metrics["hit@10"] == 0.0
    assert b.counts["parse_failed"] == 1 and b.rates["parse_failure_rate"] == 0.5
    assert b.counts["unfinished_think"] == 1
    assert report.overall.metrics["hit@1"] == 0.25
    assert report.overall.counts["rows"] == 4


def test_bootstrap_ci_contains_mean_and_is_deterministic() -> None:
    rows = model_records(0.4, seed=3, n=200)
    r1 = score_predictions(rows, n_bootstrap=300, seed=5)
    r2 = score_predictions(rows, n_bootstrap=300, seed=5)
    r3 = score_predictions(rows, n_bootstrap=300, seed=6)
    assert r1.to_dict() == r2.to_dict()
    assert r1.overall.ci != r3.overall.ci
    for g in r1.groups().values():
        for m in NAMES:
            lo, hi = g.ci[m]
            assert lo <= g.metrics[m] <= hi
            assert hi > lo


def test_contract_violations_are_reported(tmp_path: Path) -> None:
    good = record(1, "A", 1)
    with pytest.raises(ValueError, match="duplicate row_id 1"):
        score_predictions([good, good])
    bad = {k: v for k, v in good.items() if k != "candidate_ids"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: missing required keys \['candidate_ids'\]"):
        load_predictions(path)


def test_optional_fields_may_be_missing() -> None:
    minimal = {k: record(7, "A", 2)[k] for k in ("row_id", "gt_item_id", "candidate_ids", "raw_text")}
    report = score_predictions([minimal], n_bootstrap=50)
    assert list(report.by_user_type) == ["unknown"]
    assert report.overall.metrics["mrr"] == 0.5
    assert report.overall.generation["mean_seconds"] is None


def test_write_report_outputs(tmp_path: Path) -> None:
    report = score_predictions(model_records(0.5, seed=1, n=60), n_bootstrap=100)
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["overall"]["n"] == 60 and set(data["by_user_type"]) == set(TYPES)
    assert data["overall"]["metrics"]["hit@1"] == pytest.approx(report.overall.metrics["hit@1"])
    md = paths["markdown"].read_text()
    assert "| overall | 60 |" in md and "Hit@10" in md and "NDCG@5" in md
    for key in ("metrics_png", "errors_png"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    assert len(paths["per_row"].read_text().splitlines()) == 60


def test_holm_hand_worked() -> None:
    # sorted p: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert math.isnan(holm([math.nan, 0.01])[0]) and holm([math.nan, 0.01])[1] == pytest.approx(0.01)


def test_paired_t_test_degenerate_cases() -> None:
    same = np.array([0.0, 1.0, 1.0])
    assert paired_t_test(same, same) == (0.0, 1.0)
    assert paired_t_test(same, same + 1)[1] == 0.0


def test_compare_detects_clearly_better_model(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", model_records(0.15, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", model_records(0.65, seed=2))
    result = compare_runs(a, b, n_bootstrap=300, seed=0)
    assert result["n_pairs"] == 300 and list(result["metrics"]) == NAMES
    for name in ("hit@1", "mrr", "ndcg@5", "ndcg@10"):
        m = result["metrics"][name]
        assert m["mean_diff"] > 0.2
        assert m["significant"] and m["p_holm"] < 1e-6
        assert m["p_holm"] >= m["p"]
        assert 0 < m["ci_low"] <= m["mean_diff"] <= m["ci_high"]
    assert set(result["by_user_type"]) == set(TYPES)
    assert result == compare_runs(a, b, n_bootstrap=300, seed=0)  # seeded


def test_compare_with_itself_and_from_score_dirs(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", model_records(0.3, seed=1, n=90))
    b = write_jsonl(tmp_path / "b.jsonl", model_records(0.6, seed=2, n=90))
    same = compare_runs(a, a, n_bootstrap=100)
    assert all(m["mean_diff"] == 0 and m["p"] == 1.0 and not m["significant"] for m in same["metrics"].values())
    write_report(score_predictions(a, n_bootstrap=50), tmp_path / "sa")
    write_report(score_predictions(b, n_bootstrap=50), tmp_path / "sb")
    from_dirs = compare_runs(tmp_path / "sa", tmp_path / "sb", n_bootstrap=100)
    from_files = compare_runs(a, b, n_bootstrap=100)
    assert from_dirs["metrics"] == from_files["metrics"]


def test_compare_refuses_different_row_sets() -> None:
    with pytest.raises(ValueError, match="1 row_id\\(s\\) only in A \\(<in-memory>\\), 0 only in B \\(<in-memory>\\)"):
        compare_runs(model_records(0.3, 1, n=10), model_records(0.3, 1, n=9))


def test_cli_score_and_compare(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", model_records(0.2, seed=1, n=60))
    b = write_jsonl(tmp_path / "b.jsonl", model_records(0.7, seed=2, n=60))
    out = tmp_path / "score_a"
    assert main(["eval", "score", "--predictions", str(a), "--output", str(out), "--bootstrap", "50"]) == 0
    for name in ("report.json", "report.md", "metrics_by_user_type.png", "error_rates_by_user_type.png"):
        assert (out / name).is_file()
    cmp_out = tmp_path / "cmp"
    assert main(["eval", "compare", str(out), str(b), "--output", str(cmp_out), "--bootstrap", "50"]) == 0
    assert json.loads((cmp_out / "compare.json").read_text())["n_pairs"] == 60
    assert "p (Holm)" in (cmp_out / "compare.md").read_text()
    assert main(["eval", "score", "--predictions", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    pred = write_jsonl(tmp_path / "p.jsonl", perfect_records(3))
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "kitrec_fast", "eval", "score", "--predictions", str(pred),
         "--output", str(out), "--bootstrap", "20"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["overall"]["metrics"]["hit@1"] == 1.0


@pytest.mark.parametrize("case", [str.lower, str.swapcase, lambda s: f"  {s} "])
def test_ground_truth_id_matches_whatever_its_case(case) -> None:
    # item ids are case-insensitive (B0004 and b0004 are one ASIN), on the ground-truth side too:
    # only the ground truth's spelling changes here, the candidates and the answer keep theirs
    rows = [record(1, "A", 1), record(2, "A", 3), record(3, "A", None)]
    plain = score_predictions(rows, n_bootstrap=50).overall.metrics
    varied = score_predictions([{**r, "gt_item_id": case(r["gt_item_id"])} for r in rows], n_bootstrap=50)
    assert plain["hit@1"] == pytest.approx(1 / 3) and plain["mrr"] == pytest.approx((1 + 1 / 3) / 3)
    assert varied.overall.metrics == plain


def test_a_torn_last_line_says_rerunning_generate_repairs_it(tmp_path: Path, capsys) -> None:
    from kitrec_fast.eval.generate.resume import read_done
    from kitrec_fast.eval.score import GENERATE_CONFIG

    rows = model_records(0.5, seed=3, n=6)
    preds = tmp_path / "gen" / "predictions.jsonl"
    preds.parent.mkdir()
    (preds.parent / GENERATE_CONFIG).write_text(json.dumps({"fingerprint": {"dataset": "embedded:test_music"}}))
    # a kill mid-write: five whole rows, then half of the sixth and no newline
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]) + json.dumps(rows[5])[:80], encoding="utf-8")
    assert main(["eval", "score", "--predictions", str(preds), "--output", str(tmp_path / "s")]) == 2
    err = " ".join("".join(capsys.readouterr()).split())  # eval's errors are printed on its console
    assert err.count("error:") == 1 and "predictions.jsonl:6: the last line is not valid JSON" in err
    assert "rerun the same `eval generate` command" in err and not (tmp_path / "s").exists()
    # what the message promises: generate's resume cuts the torn line off, and the rest then scores
    assert sorted(read_done(preds)) == list(range(5))
    assert len(load_predictions(preds)) == 5
    # a bad line with rows after it is not a torn end: the plain message
    preds.write_text(json.dumps(rows[0])[:80] + "\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"predictions.jsonl:1: not valid JSON \("):
        load_predictions(preds)
