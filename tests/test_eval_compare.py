"""`eval compare` refusing runs that do not measure the same task, its inputs and its output; eval plots; empty input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from kitrec_fast.cli import main
from kitrec_fast.eval.compare import compare_runs, fmt_p
from kitrec_fast.eval.plots import ALL_ZERO_NOTE, NA_LABEL, error_rates_chart
from kitrec_fast.eval.score import score_predictions, write_report
from kitrec_fast.errors import UserError

TYPES = ("overlapping_books_music", "source_only_music")


def record(row_id: int, n_cands: int, gt_pos: int | None, extra: list[str] = ()) -> dict:
    cands = [f"B{row_id:04d}{j:05d}" for j in range(n_cands)]
    ranked = cands[1:10]
    if gt_pos is not None:
        ranked.insert(gt_pos - 1, cands[0])
    ids = list(extra) + ranked
    text = "<think>\nx\n</think>\n```json\n" + json.dumps([{"item_id": i, "confidence_score": 8} for i in ids]) + "\n```"
    return {"row_id": row_id, "user_type": TYPES[row_id % 2], "gt_item_id": cands[0], "gt_rating": 4.0,
            "candidate_ids": cands, "raw_text": text}


def rows(n_cands: int = 20, seed: int = 0, n: int = 40, extra: list[str] = ()) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [record(i, n_cands, None if rng.random() < 0.2 else int(rng.integers(1, 11)), extra) for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_empty_predictions_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "predictions.jsonl"
    empty.write_text("\n")
    assert main(["eval", "score", "--predictions", str(empty), "--output", str(tmp_path / "s")]) == 2
    assert "holds no predictions" in capsys.readouterr().out
    assert not (tmp_path / "s" / "report.json").exists()


def test_compare_refuses_different_protocols_unless_forced(tmp_path: Path, capsys) -> None:
    # an invented id in front of every answer: kitrec closes the list up, strict does not
    pred = write_jsonl(tmp_path / "p.jsonl", rows(extra=["B0INVENTED"]))
    for protocol in ("kitrec", "strict"):
        assert main(["eval", "score", "--predictions", str(pred), "--output", str(tmp_path / protocol),
                     "--bootstrap", "10", "--protocol", protocol]) == 0
    capsys.readouterr()
    args = ["eval", "compare", str(tmp_path / "kitrec"), str(tmp_path / "strict"), "--bootstrap", "10"]
    assert main(args) == 2
    assert "protocols differ: A was scored with 'kitrec', B with 'strict'" in capsys.readouterr().out
    assert main(args + ["--force", "--output", str(tmp_path / "cmp")]) == 0
    assert "WARNING: NOT COMPARABLE" in capsys.readouterr().out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["protocol"] == {"a": "kitrec", "b": "strict"} and len(result["warnings"]) == 1
    assert "NOT COMPARABLE" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_refuses_different_candidate_counts(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", rows(n_cands=100))
    b = write_jsonl(tmp_path / "b.jsonl", rows(n_cands=50, seed=1))
    with pytest.raises(UserError, match=r"candidate counts differ on 40 of 40 rows \(row_id 0: A had 100, B had 50\)"):
        compare_runs(a, b, n_bootstrap=10)
    forced = compare_runs(a, b, n_bootstrap=10, force=True)
    assert forced["candidates_per_row"] == {"min": 50, "max": 100} and forced["warnings"]
    same = compare_runs(a, write_jsonl(tmp_path / "c.jsonl", rows(n_cands=100, seed=1)), n_bootstrap=10)
    assert same["warnings"] == [] and same["candidates_per_row"] == {"min": 100, "max": 100}


def test_compare_accepts_a_generate_folder_and_uses_its_score_only_while_fresh(tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    pred = write_jsonl(gen / "predictions.jsonl", rows(extra=["B0INVENTED"]))
    other = write_jsonl(tmp_path / "other.jsonl", rows(seed=3))
    write_report(score_predictions(pred, protocol="strict", n_bootstrap=10), gen / "score")
    # the folder's score/ (strict) is found and its protocol read from report.json
    with pytest.raises(UserError, match="protocols differ"):
        compare_runs(gen, other, n_bootstrap=10)
    # predictions written after that score: the score is stale, the predictions are scored afresh
    later = (gen / "score" / "per_row.jsonl").stat().st_mtime + 10
    os.utime(pred, (later, later))
    result = compare_runs(gen, other, n_bootstrap=10)
    assert result["a"] == str(pred) and result["protocol"] == {"a": "kitrec", "b": "kitrec"}
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(UserError, match="neither an `eval score` output"):
        compare_runs(tmp_path / "not_a_run", other)


def test_compare_table_has_named_columns_and_readable_p_values(tmp_path: Path, capsys) -> None:
    from kitrec_fast.eval.cli import _compare_table

    a = write_jsonl(tmp_path / "a.jsonl", rows(n=200, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", [record(i, 20, 1) for i in range(200)])  # always right: a big gain
    result = compare_runs(a, b, n_bootstrap=10)
    table = _compare_table(result)
    headers = [str(c.header) for c in table.columns]
    assert all(h.strip() for h in headers) and "significant" in headers
    cells = {str(c.header): list(c.cells) for c in table.columns}
    assert result["metrics"]["hit@1"]["p_holm"] < 1e-4 and cells["p (Holm)"][0] == "<0.0001"
    assert fmt_p(0.012345) == "0.0123" and fmt_p(math.nan) == "n/a" and fmt_p(1.0) == "1.0000"
    md = compare_runs(a, a, n_bootstrap=10)
    from kitrec_fast.eval.compare import format_comparison_markdown

    assert "e-" not in format_comparison_markdown(result) and "| 1.0000 |" in format_comparison_markdown(md)


def test_compare_table_title_names_which_run_is_a_and_which_is_b(tmp_path: Path) -> None:
    from rich.console import Console

    from kitrec_fast.eval.cli import _compare_table

    a = write_jsonl(tmp_path / "baseline.jsonl", rows(n=20, seed=1))
    b = write_jsonl(tmp_path / "tuned.jsonl", rows(n=20, seed=2))
    console = Console(record=True, width=200)
    result = compare_runs(a, b, n_bootstrap=10)
    console.print(_compare_table(result))
    title = console.export_text().splitlines()[:3]
    assert "B - A" in title[0]
    assert title[1].strip() == f"A: {result['a']}" and "baseline" in title[1]
    assert "B: " in title[2] and "tuned" in title[2]


# -- plots ---------------------------------------------------------------------------------------

def test_error_chart_writes_na_for_missing_rates_and_says_when_all_are_zero() -> None:
    # clean answers and no `finished` field: every error rate 0, the token-limit rate unknown
    report = score_predictions([record(i, 20, 1) for i in range(6)], n_bootstrap=10)
    assert report.overall.rates["token_limit_rate"] is None
    fig = error_rates_chart(report)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    n_groups = 1 + len(report.by_user_type)
    assert texts.count(NA_LABEL) == n_groups  # one n/a per group, for the token-limit series
    assert ALL_ZERO_NOTE in texts
    heights = [p.get_height() for p in ax.patches]
    assert sum(math.isnan(h) for h in heights) == n_groups  # no zero bar stands in for n/a
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_error_chart_with_real_errors_has_no_all_zero_note() -> None:
    report = score_predictions([{**record(0, 20, 1), "finished": True},
                                {**record(1, 20, 1), "raw_text": "", "finished": False}], n_bootstrap=10)
    fig = error_rates_chart(report)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert ALL_ZERO_NOTE not in texts
    # the empty answer's group emitted no entries: its invalid and duplicate shares do not exist
    assert texts.count(NA_LABEL) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- several runs against one baseline -----------------------------------------------------------

def _better(seed: int, n: int = 60) -> list[dict]:
    """A run that usually ranks the ground truth higher than ``rows()`` does, with noise."""
    rng = np.random.default_rng(seed)
    return [record(i, 20, int(rng.integers(1, 4)) if rng.random() < 0.7 else None) for i in range(n)]


def test_compare_many_runs_is_one_holm_family_and_two_arguments_keep_their_meaning(tmp_path: Path, capsys) -> None:
    from scipy import stats

    base = write_jsonl(tmp_path / "base.jsonl", rows(n=60, seed=1))
    r1 = write_jsonl(tmp_path / "r1.jsonl", _better(2))
    r2 = write_jsonl(tmp_path / "r2.jsonl", rows(n=60, seed=5))
    args = ["eval", "compare", str(base), str(r1), str(r2), "--bootstrap", "10", "--output", str(tmp_path / "many")]
    assert main(args) == 0
    out = capsys.readouterr().out
    many = json.loads((tmp_path / "many" / "compare.json").read_text())
    comps = many["comparisons"]
    assert [c["b"] for c in comps] == [str(r1), str(r2)] and all(c["a"] == str(base) for c in comps)
    assert "r1.jsonl" in out and "r2.jsonl" in out and "Holm over all" in out
    cells = [(c["b"], name, m) for c in comps for name, m in c["metrics"].items()]
    family = len(cells)
    assert many["holm_family"] == family == 2 * len(comps[0]["metrics"])
    # each p is scipy's paired t-test of that run against the baseline, on the rows themselves
    hit1 = lambda recs: np.array([1.0 if json.loads(r["raw_text"].split("```json\n")[1].split("\n```")[0])[0]
                                  ["item_id"] == r["gt_item_id"] else 0.0 for r in recs])
    base_rows = [json.loads(x) for x in base.read_text().splitlines()]
    r1_rows = [json.loads(x) for x in r1.read_text().splitlines()]
    expected_p = stats.ttest_rel(hit1(r1_rows), hit1(base_rows)).pvalue
    assert comps[0]["metrics"]["hit@1"]["p"] == pytest.approx(expected_p)
    # Holm over the whole family by hand: the smallest p is multiplied by the family size, not by
    # the number of metrics of its own run
    p_min, _, smallest = min((m["p"], i, m) for i, (_, _, m) in enumerate(cells))
    assert 0 < family * p_min < 1
    assert smallest["p_holm"] == pytest.approx(family * p_min)
    # two arguments: today's pairwise comparison, unchanged
    assert main(["eval", "compare", str(base), str(r1), "--bootstrap", "10", "--output", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert "comparisons" not in two
    pair = compare_runs(base, r1, n_bootstrap=10)
    assert {k: m["p_holm"] for k, m in two["metrics"].items()} == \
        pytest.approx({k: m["p_holm"] for k, m in pair["metrics"].items()}, nan_ok=True)
    assert two["metrics"]["hit@1"]["p_holm"] <= comps[0]["metrics"]["hit@1"]["p_holm"]
    assert "one Holm correction over all" in (tmp_path / "many" / "compare.md").read_text()
