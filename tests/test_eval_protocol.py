"""The scoring protocols rule by rule, each against a hand-computed expectation.

Every row below lists its emitted ids and, worked out by hand, the ground truth's position
under ``kitrec`` (the paper: invalid ids dropped and the list closed up, repeats in place,
case-free) and under ``strict`` (every emitted entry occupies its rank).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kitrec_fast.cli import main
from kitrec_fast.eval.score import score_predictions, score_row

CANDS = [f"B0{j:08d}X" for j in range(1, 21)]  # 20 upper-case ASIN-like ids
GT = CANDS[0]
C = CANDS[1:]  # negatives
BAD = ["B0NOTACAND", "B0INVENTED", "B0MADEUP01"]


def answer(ids: list[str], confs: list[float] | None = None) -> str:
    confs = confs if confs is not None else [9.0 - 0.5 * i for i in range(len(ids))]
    items = [{"rank": i + 1, "item_id": x, "confidence_score": c} for i, (x, c) in enumerate(zip(ids, confs))]
    return "<think>\nweighing the candidates\n</think>\n```json\n" + json.dumps(items) + "\n```"


def rec(row_id: int, raw_text: str, rating: float | None = 4.0) -> dict:
    return {"row_id": row_id, "user_type": "t", "gt_item_id": GT, "gt_rating": rating, "candidate_ids": CANDS,
            "raw_text": raw_text}


def ndcg(pos: int | None, k: int) -> float:
    return 1 / math.log2(pos + 1) if pos is not None and pos <= k else 0.0


# (name, emitted ids, GT position under kitrec, under strict), positions worked out by hand
ROWS = [
    # three repeats before the ground truth: it is the 13th entry written; dropping repeats
    # (the old behaviour) would have moved it to 10 and counted a Hit@10
    ("repeats keep their positions", [C[0], C[1], C[0], C[2], C[1], C[3], C[0], C[4], C[5], C[6], C[7], C[8], GT],
     13, 13),
    ("lower-case ids match", [C[0].lower(), GT.lower(), C[1]], 2, 2),
    ("invalid id at rank 1", [BAD[0], GT, C[0]], 1, 2),
    # two invented ids among the first 11 entries: the paper's list closes up to put GT at 10
    ("GT after position 10", [BAD[0]] + C[:9] + [BAD[1], GT], 10, 12),
    ("GT after position 10, all valid", C[:10] + [GT], 11, 11),
    ("GT repeated: its first occurrence counts", [C[0], GT, C[1], GT], 2, 2),
    ("GT never named", C[:10], None, None),
]


@pytest.mark.parametrize("name,ids,kitrec_pos,strict_pos", ROWS, ids=[r[0] for r in ROWS])
def test_position_and_metrics_per_protocol(name, ids, kitrec_pos, strict_pos) -> None:
    for protocol, pos in (("kitrec", kitrec_pos), ("strict", strict_pos)):
        row = score_row(rec(0, answer(ids)), protocol=protocol)
        assert row.gt_position == pos, protocol
        expected = {"hit@1": float(pos == 1), "hit@5": float(pos is not None and pos <= 5),
                    "hit@10": float(pos is not None and pos <= 10), "mrr": 0.0 if pos is None else 1 / pos,
                    "ndcg@5": ndcg(pos, 5), "ndcg@10": ndcg(pos, 10)}
        assert row.metrics == pytest.approx(expected), protocol


def test_repeats_example_numbers() -> None:
    # the row from the first case, in numbers: Hit@10 0 and MRR 1/13 (not Hit@10 1, MRR 1/10)
    row = score_row(rec(0, answer(ROWS[0][1])))
    assert row.metrics["hit@10"] == 0.0 and row.metrics["mrr"] == pytest.approx(0.076923, abs=1e-6)
    assert row.n_duplicates == 3 and row.n_invalid == 0 and row.n_ranked == 13


def test_confidence_is_the_first_valid_entrys_and_zero_is_a_calibration_parse_error() -> None:
    rows = [
        rec(0, answer([BAD[0], GT, C[0]], confs=[10.0, 6.0, 5.0]), rating=4.0),  # conf 6 -> 3 vs 4: error 1
        rec(1, answer([GT, C[0]], confs=[0.0, 8.0]), rating=5.0),  # conf 0: parse error for calibration only
        rec(2, answer([C[0], GT], confs=[9.0, 2.0]), rating=3.0),  # conf 9 -> 4.5 vs 3: error 1.5
    ]
    report = score_predictions(rows, n_bootstrap=10)
    g = report.overall
    assert g.calibration["n"] == 2 and g.calibration["confidence_zero"] == 1
    assert g.calibration["mae"] == pytest.approx((1 + 1.5) / 2)
    assert g.calibration["rmse"] == pytest.approx(math.sqrt((1 + 2.25) / 2))
    # the row with confidence 0 keeps its ranking metrics: GT first in row 1, first (after the
    # invalid id closes up) in row 0, second in row 2
    assert g.metrics["hit@1"] == pytest.approx(2 / 3) and g.metrics["mrr"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert g.counts["confidence_zero"] == 1 and g.counts["paper_parse_errors"] == 1  # only row 0's invalid id


def test_rows_without_a_list_score_zero_and_stay_in_the_denominators() -> None:
    rows = [
        rec(0, answer([GT])),
        rec(1, ""),  # empty answer
        rec(2, "<think>\nstill comparing " + GT + " with"),  # hit the token limit inside <think>
        {**rec(3, "I would recommend the first one."), "finished": True},
    ]
    rows[2]["finished"] = False
    report = score_predictions(rows, n_bootstrap=10)
    g = report.overall
    assert g.n == 4
    assert g.metrics["hit@1"] == 0.25 and g.metrics["mrr"] == 0.25 and g.metrics["ndcg@10"] == 0.25
    assert g.counts["parse_failed"] == 3 and g.counts["paper_parse_errors"] == 3
    assert g.counts["empty_output"] == 1 and g.counts["unfinished_think"] == 1
    # two rows say how generation ended, one of them at the token limit
    assert g.counts["token_limit"] == 1 and g.rates["token_limit_rate"] == 0.5


def test_paper_parse_error_counts_rows_the_finer_rates_count_entries() -> None:
    rows = [
        rec(0, answer([GT, C[0], C[1]])),  # clean
        rec(1, answer([GT, BAD[0], C[0], C[1]])),  # one invalid id out of 4: a paper parse error
        rec(2, answer([BAD[0], BAD[1], GT, GT])),  # two invalid + one repeat out of 4
        rec(3, "no json here"),  # no answer
    ]
    g = score_predictions(rows, n_bootstrap=10).overall
    assert g.counts["paper_parse_errors"] == 3 and g.rates["paper_parse_error_rate"] == 0.75
    assert g.rates["parse_failure_rate"] == 0.25
    assert g.counts["items_emitted"] == 11 and g.counts["invalid_items"] == 3
    assert g.rates["invalid_item_rate"] == pytest.approx(3 / 11)
    assert g.rates["duplicate_rate"] == pytest.approx(1 / 11) and g.rates["rows_with_invalid_rate"] == 0.5


def test_truncated_array_keeps_its_complete_items_and_is_counted() -> None:
    text = '<think>\nok\n</think>\n[{"item_id": "%s"}, {"item_id": "%s"}, {"item_id": "B0' % (C[0], GT)
    g = score_predictions([rec(0, text)], n_bootstrap=10).overall
    assert g.metrics["mrr"] == 0.5 and g.counts["truncated_answers"] == 1 and g.counts["parse_failed"] == 0


def test_ids_written_as_json_numbers_match() -> None:
    cands = ["0316769487", "1234567890"]  # ISBN-style ASINs of books are all digits
    record = {"row_id": 0, "gt_item_id": "1234567890", "candidate_ids": cands,
              "raw_text": '[{"item_id": 316769487}, {"item_id": 1234567890}]'}
    # 316769487 lost its leading zero as a number: not a candidate; the second matches
    assert score_row(record).gt_position == 1 and score_row(record, protocol="strict").gt_position == 2


# -- the same rows under both protocols, end to end through the CLI ----------------------------

def test_strict_vs_kitrec_on_the_same_file(tmp_path: Path) -> None:
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(rec(i, answer(ids))) + "\n" for i, (_, ids, _, _) in enumerate(ROWS)))
    results = {}
    for protocol in ("kitrec", "strict"):
        out = tmp_path / protocol
        assert main(["eval", "score", "--predictions", str(pred), "--output", str(out), "--bootstrap", "10",
                     "--protocol", protocol]) == 0
        results[protocol] = json.loads((out / "report.json").read_text())
        assert results[protocol]["protocol"]["name"] == protocol
        assert f"Protocol: **{protocol}**" in (out / "report.md").read_text()
    n = len(ROWS)
    for protocol, col in (("kitrec", 2), ("strict", 3)):
        positions = [r[col] for r in ROWS]
        m = results[protocol]["overall"]["metrics"]
        assert m["hit@1"] == pytest.approx(sum(p == 1 for p in positions) / n)
        assert m["hit@10"] == pytest.approx(sum(p is not None and p <= 10 for p in positions) / n)
        assert m["mrr"] == pytest.approx(sum(1 / p for p in positions if p) / n)
        assert m["ndcg@10"] == pytest.approx(sum(ndcg(p, 10) for p in positions) / n)
    # hand-counted: kitrec hits@1 on "invalid id at rank 1" only; strict on none
    assert results["kitrec"]["overall"]["metrics"]["hit@1"] == pytest.approx(1 / 7)
    assert results["strict"]["overall"]["metrics"]["hit@1"] == 0.0
    assert results["kitrec"]["rows"] == n and results["kitrec"]["candidates_per_row"] == {"min": 20, "max": 20}


def test_unknown_protocol_is_a_clear_error(tmp_path: Path, capsys) -> None:
    pred = tmp_path / "p.jsonl"
    pred.write_text(json.dumps(rec(0, answer([GT]))) + "\n")
    with pytest.raises(SystemExit):  # argparse choices
        main(["eval", "score", "--predictions", str(pred), "--output", str(tmp_path / "o"), "--protocol", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err
