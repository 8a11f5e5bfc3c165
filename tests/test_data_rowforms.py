"""Every documented KitREC row form loads, parses and truncates (hand-written fixtures, real parsing)."""

import json

import pytest

from kitrec_fast.badrow import BadRowError
from kitrec_fast.data.schema import normalize_row, row_user_type
from kitrec_fast.truncate.sections import CANDIDATES, SOURCE, TARGET, parse_prompt
from kitrec_documented import (FORMAT_LINE, GT_FORMS, eval_row, template_prompt, training_prompt,
                               training_row_nested)


def _item_ids(block):
    return [ln.item_id for ln in block.lines if ln.is_item]


@pytest.mark.parametrize("gt_form", GT_FORMS)
@pytest.mark.parametrize("nested", [True, False])
def test_eval_rows_in_every_ground_truth_form(gt_form, nested):
    raw = eval_row(gt_form, user_id="AEVAL7", nested=nested)
    row = normalize_row(raw, 4, require_target=False)
    assert (row.user_id, row.user_type) == ("AEVAL7", "overlapping_books_movies")
    assert row.gt_item_id == "C00000037" and row.gt_rating == 4.0 and row.gt_title == "Album"
    assert row.target == "" and row.prompt == raw["input"]
    assert row.target_domain == "Movies & TV" and row.source_domain == "Books"
    assert len(row.parsed.candidate_ids) == 100
    assert row_user_type(raw) == "overlapping_books_movies"


def test_eval_row_without_output_key_and_training_refuses_it():
    raw = eval_row("json_list", output=None)
    assert "output" not in raw
    assert normalize_row(raw, 0, require_target=False).target == ""
    with pytest.raises(BadRowError, match="target field 'output'"):
        normalize_row(raw, 0, require_target=True)
    with pytest.raises(BadRowError, match="target field 'output'"):
        normalize_row(eval_row("json_list", output=""), 0, require_target=True)


def test_training_row_with_nested_metadata():
    raw = training_row_nested("AMETA9")
    row = normalize_row(raw, 0, require_target=True)
    assert (row.user_id, row.user_type, row.candidate_set) == ("AMETA9", "cold_start_2core_movies", "B")
    assert row.gt_item_id == "M00000011" and row.target == raw["output"]
    assert row.target_domain == "Movies & TV"
    p = row.parsed
    assert _item_ids(p.source_history) == [f"B{i:08d}" for i in range(4)]
    assert _item_ids(p.target_history) == ["B00E9E5EEK", "V00000001"]
    assert p.candidates.header == "## List of Available Candidate Items (100 items):\n"


def test_template_layout_sections():
    prompt, gt, cands = template_prompt(n_source=5, n_target=3, tgt="Movies & TV")
    p = parse_prompt(prompt)
    assert p.render() == prompt
    assert [b.kind for b in p.blocks] == ["preamble", SOURCE, TARGET, CANDIDATES, "task"]
    assert p.source_history.header == "### User's Books History:\n"
    assert p.target_history.header == "### User's Movies & TV History:\n"
    # the list-form history lines are items; the Format line and the blank line are fixed text
    assert [ln.is_item for ln in p.source_history.lines] == [True] * 5 + [False, False]
    assert p.source_history.lines[5].text == FORMAT_LINE
    assert len(p.target_history.items) == 3
    assert p.candidate_ids == cands and len(cands) == 100 and gt in cands
    fixed = [ln.text for ln in p.candidates.lines if not ln.is_item]
    assert fixed[:2] == ["Each candidate shows its title, categories, average rating and a short summary.\n", "[\n"]
    assert fixed[2:] == ["]\n", "\n"]
    assert p.candidates.items[0].text.startswith("  (ID: C00000000)")
    # a "(Source Domain ...)" header inside the task is task text, and its "(ID: ...)" no candidate
    assert "### Phase 1: Pattern Recognition (Source Domain Analysis)" in p.task and "NOTACAND1" not in cands


def test_suffixless_sections_are_told_apart_by_domain_name_not_order():
    prompt, _, _ = template_prompt(n_source=4, n_target=2, target_first=True)
    p = parse_prompt(prompt)
    assert p.source_history.header == "### User's Books History:\n"
    assert _item_ids(p.source_history) == [None] * 4 and len(p.source_history.items) == 4
    assert len(p.target_history.items) == 2
    assert [b.kind for b in p.blocks][1:3] == [TARGET, SOURCE]


def test_suffixless_sections_without_domain_names_fall_back_to_order():
    p = parse_prompt(template_prompt(n_source=4, n_target=2, params=False)[0])
    assert (len(p.source_history.items), len(p.target_history.items)) == (4, 2)


def test_suffixed_template_layout_also_parses():
    prompt, gt, cands = template_prompt(suffix=True, tgt="Movies & TV")
    p = parse_prompt(prompt)
    assert p.target_history.header == "### User's Movies & TV History (Target Domain):\n"
    assert (len(p.source_history.items), len(p.target_history.items)) == (5, 3) and p.candidate_ids == cands


@pytest.mark.parametrize("mutate,problem", [
    (lambda r: r.__setitem__("ground_truth", json.dumps([{"item_id": "C00000037"}, {"item_id": "C00000001"}])),
     "list of 2 entries"),
    (lambda r: r.__setitem__("ground_truth", '[{"item_id": "C00000037",}'), "not valid JSON (Expecting"),
    (lambda r: r.__setitem__("ground_truth", json.dumps([{"item_id": "C99999999"}])), "not among"),
    (lambda r: r["metadata"].__setitem__("user_type", ""), "user_type"),
    (lambda r: r.update(user_id="OTHER"), "disagrees with metadata.user_id"),
])
def test_broken_documented_rows_name_row_and_user(mutate, problem):
    raw = eval_row("json_list", user_id="ABROKEN")
    mutate(raw)
    with pytest.raises(BadRowError) as info:
        normalize_row(raw, 6, require_target=False)
    msg = str(info.value)
    assert problem in msg and "row 7 (1-based" in msg
    assert info.value.index == 6 and ("ABROKEN" in msg or "OTHER" in msg)


def test_training_prompt_helper_is_the_documented_training_layout():
    prompt, gt, cands = training_prompt(tgt="Music")
    p = parse_prompt(prompt)
    assert p.candidate_ids == cands and gt in cands and "(Target Domain)" in p.target_history.header


@pytest.mark.parametrize("gt_form", ["list", "json_list", "dict"])
def test_documented_rows_survive_parquet_and_jsonl_files(tmp_path, gt_form):
    # Hub copies arrive through Arrow: nested metadata becomes a struct, a ground-truth list a list of structs
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kitrec_fast.data.load import load_raw

    rows = [eval_row(gt_form, user_id=f"AFILE{i}") for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("rows.parquet", "rows.jsonl"):
        loaded = load_raw(str(tmp_path / name))
        got = [normalize_row(r, i, require_target=False) for i, r in enumerate(loaded)]
        assert [(r.user_id, r.gt_item_id, r.gt_rating) for r in got] == [(f"AFILE{i}", "C00000037", 4.0) for i in range(3)]
