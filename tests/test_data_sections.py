import pytest

from kitrec_fast.truncate.sections import (CANDIDATES, SOURCE, TARGET, TEXT, PromptFormatError, header_count,
                                           parse_prompt, rewrite_header_count)
from kitrec_prompts import make_prompt


@pytest.mark.parametrize("kw", [
    {},
    {"header": "total"},
    {"cand_style": "mixed", "hist_style": "list"},
    {"trailing_newline": True},
    {"n_source": 0, "n_target": 0},
    {"domain": "Movies"},
])
def test_round_trip_and_structure(kw):
    prompt, gt, cands = make_prompt(**kw)
    parsed = parse_prompt(prompt)
    assert parsed.render() == prompt
    assert parsed.candidate_ids == cands
    assert parsed.preamble.startswith("# Expert Cross-Domain")
    assert parsed.task.startswith("## Your Task")
    assert len(parsed.candidates.items) == 100
    assert len(parsed.source_history.items) == kw.get("n_source", 5)
    assert len(parsed.target_history.items) == kw.get("n_target", 3)


def test_odd_characters_inside_lines_survive_round_trip():
    prompt, _, cands = make_prompt(n_candidates=5)
    prompt = prompt.replace("strings", "str\rings\u2028and\x0bmore", 3)
    parsed = parse_prompt(prompt)
    assert parsed.render() == prompt
    assert parsed.candidate_ids == cands


def test_item_line_forms():
    prompt = ("# T\n### User's Books History (Source Domain):\n- A Book | Fiction | Rating: 5.0\n"
              "  1. Another | x\nnot an item line\n\n"
              "### User's Movies History (Target Domain):\n[Item: B00E9E5EEK] | Unknown | Rating: 2.0\n\n"
              "## List of Available Candidate Items (Total 3)\n(ID: X1) a\n[Item: X2] | Unknown | Rating: 1.0\n"
              "- 3. (ID: X3) c\n\n## Reasoning Guidelines\n- not a candidate (ID: X9)\n")
    p = parse_prompt(prompt)
    assert p.render() == prompt
    assert [ln.is_item for ln in p.source_history.lines] == [True, True, False, False]
    assert p.target_history.items[0].item_id == "B00E9E5EEK"
    assert p.candidate_ids == ["X1", "X2", "X3"]
    assert "X9" in p.task


def test_unknown_header_in_history_is_fixed_text():
    prompt, _, _ = make_prompt(n_candidates=3)
    prompt = prompt.replace("### User's Music", "## Notes\n(ID: N1) a note that looks like an item\n\n### User's Music")
    p = parse_prompt(prompt)
    assert p.render() == prompt
    kinds = [b.kind for b in p.blocks]
    assert kinds.index(SOURCE) < kinds.index(TEXT) < kinds.index(TARGET) < kinds.index(CANDIDATES)
    assert all(not ln.is_item for ln in p.block(TEXT).lines)


def test_missing_candidate_section():
    prompt, _, _ = make_prompt()
    broken = prompt.replace("## List of Available Candidate Items (100 items):", "## Items:")
    with pytest.raises(PromptFormatError, match="Candidate"):
        parse_prompt(broken)


def test_header_count_rewrite():
    assert header_count("## List of Available Candidate Items (100 items):\n") == 100
    assert header_count("## List of Available Candidate Items (Total 100)\n") == 100
    assert rewrite_header_count("## List of Available Candidate Items (100 items):\n", 50) == \
        "## List of Available Candidate Items (50 items):\n"
    assert rewrite_header_count("## List of Available Candidate Items (Total 100)\n", 49) == \
        "## List of Available Candidate Items (Total 49)\n"
    assert rewrite_header_count("## List of Available Candidate Items:\n", 5) == "## List of Available Candidate Items:\n"


def test_synthetic_rows_parse():
    synth = pytest.importorskip("kitrec_fast.data.synth")
    from kitrec_fast.data.schema import normalize_row

    for kw in ({"domain": "music"}, {"domain": "movies", "split": "test"}, {"kind": "singleft", "split": "val"}):
        for i, raw in enumerate(synth.generate_rows(3, seed=1, **kw)):
            row = normalize_row(raw, i, require_target=False)
            p = parse_prompt(row.prompt)
            assert p.render() == row.prompt
            assert len(p.candidate_ids) == 100
            assert row.gt_item_id in p.candidate_ids
