import json

import pytest

from kitrec_fast.data.schema import BadRowError, normalize_row
from kitrec_prompts import make_prompt, make_row


def test_training_row():
    raw = make_row(user_id="AU1")
    raw["metadata"] = {"k": 1}
    row = normalize_row(raw, 0, require_target=True)
    assert row.prompt == raw["instruction"] and row.target == raw["output"]
    assert row.user_id == "AU1" and row.gt_item_id == raw["gt_item_id"]
    assert row.target_domain == "Music" and row.source_domain == "Books" and row.candidate_set == "A"
    assert row.extra == {"confidence_score": 9.0, "thinking_length": 100, "metadata": {"k": 1}}
    assert row.parsed.candidate_ids[50] == row.gt_item_id


@pytest.mark.parametrize("as_string", [False, True])
def test_val_row_with_ground_truth(as_string):
    prompt, gt, _ = make_prompt(header="total")
    truth = {"item_id": gt, "title": "Title", "rating": 4}
    raw = {"instruction": "Recommend an item", "input": prompt, "user_id": "V1",
           "user_type": "cold_start_2core_music", "ground_truth": json.dumps(truth) if as_string else truth}
    row = normalize_row(raw, 3, require_target=False)
    assert row.prompt == prompt and row.gt_item_id == gt and row.gt_rating == 4.0 and row.gt_title == "Title"
    assert row.target == "" and row.target_domain == "Music"


def _bad(mutate, require_target=True):
    raw = make_row(user_id="USER42")
    mutate(raw)
    with pytest.raises(BadRowError) as info:
        normalize_row(raw, 7, require_target=require_target)
    err = info.value
    assert err.index == 7
    assert "row 8 (1-based" in str(err) and err.problem in str(err)
    return err


@pytest.mark.parametrize("mutate,problem", [
    (lambda r: r.update(user_type=""), "user_type"),
    (lambda r: r.update(instruction="", input=""), "prompt"),
    (lambda r: r.pop("gt_item_id"), "gt_item_id"),
    (lambda r: r.update(gt_item_id="ZZZZ0000"), "not among"),
    (lambda r: r.update(instruction=r["instruction"].replace("List of Available Candidate Items", "Items")),
     "candidate section"),
    (lambda r: r.update(output="   "), "target"),
    (lambda r: r.update(ground_truth="{not json"), "not valid JSON"),
    (lambda r: r.update(ground_truth={"item_id": "OTHER"}), "disagrees"),
    (lambda r: r.update(gt_rating="five"), "gt_rating"),
])
def test_bad_rows_name_index_user_and_problem(mutate, problem):
    err = _bad(mutate)
    assert err.user_id == "USER42" and "USER42" in str(err)
    assert problem in err.problem
    assert "--on-bad-row" in str(err)


def test_missing_user_id():
    err = _bad(lambda r: r.pop("user_id"))
    assert err.user_id is None and "user_id" in err.problem


def test_empty_target_allowed_when_not_required():
    raw = make_row(target="")
    assert normalize_row(raw, 0, require_target=False).target == ""
