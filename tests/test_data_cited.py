"""Candidates the training target cites: counted when the cut removes them, kept first on request.

Hand-built rows: the target's reasoning names a few negatives chosen among those the published
cut drops, so the expected counts follow from the prompt itself, not from the code under test.
"""

import json

import pytest

from kitrec_fast.render.chat import get_renderer
from kitrec_fast.truncate.sections import parse_prompt
from kitrec_fast.truncate.truncate import TruncateOptions, cited_candidates, truncate_prompt
from kitrec_prompts import make_prompt, make_row, make_target


def _cut(tok, prompt, gt, target, cited, **opts):
    r = get_renderer(tok)
    return truncate_prompt(parse_prompt(prompt), gt_item_id=gt, user_id="U1", index=0,
                           measure=lambda p: r.conversation_length(p, target), line_costs=r.line_costs,
                           options=TruncateOptions(max_length=100000, **opts), cited=cited)


def _citing_target(gt, ids):
    """A target whose reasoning discusses ``ids`` (one in lower case: ASINs are case-free)."""
    named = [ids[0].lower(), *ids[1:]]
    return make_target(gt).replace("The chosen album fits best.",
                                   "Compared " + ", ".join(named) + "; the chosen album fits best.")


def test_cited_candidates_are_whole_word_case_free_ids_of_the_candidates():
    prompt, gt, cands = make_prompt(words=4)
    target = f"<think>Weighed {cands[3].lower()} and ({cands[7]}) against S00000001; not X{cands[9]}.</think>" \
             + json.dumps({"item_id": gt})
    # S00000001 is a history item, X... is no id of a candidate: neither counts
    assert cited_candidates(parse_prompt(prompt), target) == {cands[3], cands[7], gt}
    assert cited_candidates(parse_prompt(prompt), "") == frozenset()


def test_keep_cited_keeps_them_nested_and_deterministic(qwen3_tokenizer):
    tok = qwen3_tokenizer
    prompt, gt, cands = make_prompt(words=4)
    published = _cut(tok, prompt, gt, make_target(gt), frozenset())
    dropped = [c for c in cands if c not in set(published.parsed.candidate_ids)]
    cited_ids = dropped[:: len(dropped) // 5][:5]  # five ids the published cut removes
    target = _citing_target(gt, cited_ids)
    cited = cited_candidates(parse_prompt(prompt), target)
    assert cited == {gt, *cited_ids}

    off = _cut(tok, prompt, gt, target, cited)
    # the default is the published cut, whatever the target says; the record counts the loss
    assert off.parsed.candidate_ids == published.parsed.candidate_ids
    assert (off.record.cited_before, off.record.cited_cut) == (5, 5)

    on = _cut(tok, prompt, gt, target, cited, keep_cited=True)
    kept = on.parsed.candidate_ids
    assert len(kept) == 50 and gt in kept and set(cited_ids) <= set(kept)
    assert kept == [c for c in cands if c in set(kept)]  # prompt order unchanged
    assert (on.record.cited_before, on.record.cited_cut) == (5, 0)
    assert kept == _cut(tok, prompt, gt, target, cited, keep_cited=True).parsed.candidate_ids
    # the 44 uncited negatives kept are among those the published cut keeps (its order, minus the tail)
    uncited = set(kept) - set(cited)
    assert len(uncited) == 44 and uncited < set(published.parsed.candidate_ids)

    # nested across budgets, cited first: 4 candidates keep the GT and 3 of the 5 cited
    sets = [set(_cut(tok, prompt, gt, target, cited, keep_cited=True, max_candidates=k, min_candidates=1)
                .parsed.candidate_ids) for k in (50, 20, 6, 4)]
    assert all(small <= big for big, small in zip(sets, sets[1:]))
    assert set(cited) <= sets[2] and gt in sets[3] and len(sets[3] & set(cited_ids)) == 3
    small = _cut(tok, prompt, gt, target, cited, keep_cited=True, max_candidates=4, min_candidates=1)
    assert small.record.cited_cut == 2


def _prepare(rows, tok, keep):
    from kitrec_fast.config import DataConfig
    from kitrec_fast.data.pipeline import prepare

    cfg = DataConfig(dataset="hand-built", tokenizer="offline:qwen3", val_fraction=0.0, keep_cited_candidates=keep)
    return prepare(cfg, tok, rows=rows, verify_rows=0)


@pytest.mark.parametrize("keep", [False, True])
def test_prepare_report_counts_cited_candidates_the_cut_removed(qwen3_tokenizer, keep):
    tok = qwen3_tokenizer
    rows = []
    for i, cite in enumerate(("dropped3", "none", "kept1")):
        row = make_row(user_id=f"U{i}", words=4)
        prompt, gt = row["instruction"], row["gt_item_id"]
        kept = set(_cut(tok, prompt, gt, row["output"], frozenset()).parsed.candidate_ids)
        cands = parse_prompt(prompt).candidate_ids
        if cite == "dropped3":
            row["output"] = _citing_target(gt, [c for c in cands if c not in kept][:3])
        elif cite == "kept1":
            row["output"] = _citing_target(gt, [c for c in cands if c in kept and c != gt][:1])
        rows.append(row)
    tr = _prepare(rows, tok, keep).report["truncation"]
    assert tr["keep_cited_candidates"] is keep
    assert (tr["rows_citing_candidates"], tr["cited_ids"]) == (2, 4)
    assert (tr["rows_cited_cut"], tr["cited_ids_cut"]) == ((0, 0) if keep else (1, 3))


def test_prepare_flag_reaches_report_and_model_card(tmp_path):
    from kitrec_fast.artifacts.model_card import render_model_card
    from kitrec_fast.cli import main
    from kitrec_fast.config import DataConfig, RunConfig

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(make_row(user_id=f"U{i}", words=4)) + "\n" for i in range(2)))
    out = tmp_path / "prep"
    assert main(["data", "prepare", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--output", str(out),
                 "--keep-cited-candidates"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["keep_cited_candidates"] is True and report["truncation"]["keep_cited_candidates"]
    for keep, says in ((True, "`data.keep_cited_candidates=true`"), (False, "`data.keep_cited_candidates=false`")):
        card = render_model_card(RunConfig(data=DataConfig(keep_cited_candidates=keep)), {}, {})
        assert says in card
