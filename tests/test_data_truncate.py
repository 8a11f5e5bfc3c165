import pytest

from kitrec_fast.badrow import BadRowError
from kitrec_fast.render.chat import get_renderer
from kitrec_fast.truncate.sections import parse_prompt
from kitrec_fast.truncate.truncate import TruncateOptions, truncate_prompt
from kitrec_prompts import make_prompt, make_target


def _whole_length(tok, prompt, target):
    """Length by HF's ordinary whole-text path, independent of the chunked counter under test."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                                   tokenize=False)
    return len(tok(text.rstrip("\n"), add_special_tokens=False)["input_ids"])


def _run(tok, prompt, gt, target, user_id="U1", **opts):
    r = get_renderer(tok)
    return truncate_prompt(parse_prompt(prompt), gt_item_id=gt, user_id=user_id, index=5,
                           measure=lambda p: r.conversation_length(p, target), line_costs=r.line_costs,
                           options=TruncateOptions(**opts))


def _ids(parsed_block):
    return [ln.item_id for ln in parsed_block.lines if ln.is_item]


@pytest.mark.parametrize("gt", ["first", "middle", "last"])
@pytest.mark.parametrize("header", ["items", "total"])
def test_fitting_row_still_cut_to_max_candidates(qwen3_tokenizer, gt, header):
    prompt, gt_id, cands = make_prompt(gt=gt, header=header, words=4)
    target = make_target(gt_id)
    out = _run(qwen3_tokenizer, prompt, gt_id, target, max_length=20000)
    kept = out.parsed.candidate_ids
    assert len(kept) == 50 and gt_id in kept
    assert kept == [c for c in cands if c in set(kept)]  # original order
    assert ("(50 items):" if header == "items" else "(Total 50)") in out.prompt
    assert "100" not in out.parsed.candidates.header
    rec = out.record
    assert (rec.candidates_before, rec.candidates_after, rec.history_lines_dropped) == (100, 50, 0)
    assert rec.tokens_before == _whole_length(qwen3_tokenizer, prompt, target)
    assert rec.tokens_after == _whole_length(qwen3_tokenizer, out.prompt, target) < rec.tokens_before
    # everything but the dropped candidate lines is untouched
    assert out.parsed.preamble == parse_prompt(prompt).preamble and out.parsed.task == parse_prompt(prompt).task


def test_negative_choice_is_deterministic_per_row(qwen3_tokenizer):
    prompt, gt_id, _ = make_prompt(words=4)
    target = make_target(gt_id)
    a = _run(qwen3_tokenizer, prompt, gt_id, target, user_id="U1", max_length=20000).parsed.candidate_ids
    assert a == _run(qwen3_tokenizer, prompt, gt_id, target, user_id="U1", max_length=20000).parsed.candidate_ids
    assert a != _run(qwen3_tokenizer, prompt, gt_id, target, user_id="U2", max_length=20000).parsed.candidate_ids
    assert a != _run(qwen3_tokenizer, prompt, gt_id, target, user_id="U1", seed=7, max_length=20000).parsed.candidate_ids


@pytest.mark.parametrize("gt", ["first", "middle", "last"])
@pytest.mark.parametrize("recent", ["last", "first"])
def test_history_cut_oldest_first_and_fits(qwen3_tokenizer, gt, recent):
    tok = qwen3_tokenizer
    prompt, gt_id, _ = make_prompt(n_source=30, n_target=8, gt=gt, words=30)
    target = make_target(gt_id)
    fit50 = _run(tok, prompt, gt_id, target, max_length=100000).record.tokens_after
    budget = fit50 - 800  # needs roughly 20 history lines gone
    out = _run(tok, prompt, gt_id, target, max_length=budget, history_recent=recent)
    rec = out.record
    assert rec.tokens_after == _whole_length(tok, out.prompt, target) <= budget
    assert gt_id in out.parsed.candidate_ids and rec.candidates_after == 50
    assert rec.history_lines_dropped > 0
    src, tgt = _ids(out.parsed.source_history), _ids(out.parsed.target_history)
    all_src, all_tgt = [f"S{i:08d}" for i in range(30)], [f"T{i:08d}" for i in range(8)]
    # the longer section loses lines first; a contiguous oldest block goes
    assert rec.history_dropped["source_history"] >= rec.history_dropped["target_history"]
    if recent == "last":
        assert src == all_src[len(all_src) - len(src):] and tgt == all_tgt[len(all_tgt) - len(tgt):]
    else:
        assert src == all_src[: len(src)] and tgt == all_tgt[: len(tgt)]


@pytest.mark.parametrize("gt", ["first", "middle", "last"])
def test_candidates_cut_below_max_down_to_floor(qwen3_tokenizer, gt):
    tok = qwen3_tokenizer
    prompt, gt_id, cands = make_prompt(n_source=6, n_target=3, gt=gt, words=30)
    target = make_target(gt_id)
    full50 = _run(tok, prompt, gt_id, target, max_length=100000).record.tokens_after
    out = _run(tok, prompt, gt_id, target, max_length=full50 - 1500, min_candidates=10)
    rec = out.record
    assert rec.tokens_after == _whole_length(tok, out.prompt, target) <= full50 - 1500
    assert len(_ids(out.parsed.source_history)) == 1 and len(_ids(out.parsed.target_history)) == 1
    assert 10 <= rec.candidates_after < 50
    kept = out.parsed.candidate_ids
    assert gt_id in kept and kept == [c for c in cands if c in set(kept)]
    assert f"({rec.candidates_after} items):" in out.prompt
    # nested: the smaller kept set is a subset of the 50 chosen when the row fits
    assert set(kept) <= set(_run(tok, prompt, gt_id, target, max_length=100000).parsed.candidate_ids)


@pytest.mark.parametrize("budget_cut", [0, 7, 33, 120, 400, 900, 1600, 2400])
def test_every_budget_is_met_exactly(qwen3_tokenizer, budget_cut):
    tok = qwen3_tokenizer
    prompt, gt_id, _ = make_prompt(n_source=12, n_target=4, gt="last", words=25, cand_style="mixed")
    target = make_target(gt_id)
    budget = _run(tok, prompt, gt_id, target, max_length=100000).record.tokens_after - budget_cut
    out = _run(tok, prompt, gt_id, target, max_length=budget, min_candidates=5)
    assert out.record.tokens_after == _whole_length(tok, out.prompt, target) <= budget
    assert gt_id in out.parsed.candidate_ids


def test_row_that_cannot_fit(qwen3_tokenizer):
    prompt, gt_id, _ = make_prompt(gt="first", words=30)
    target = make_target(gt_id, sentences=200)
    with pytest.raises(BadRowError) as info:
        _run(qwen3_tokenizer, prompt, gt_id, target, user_id="UBIG", max_length=1500)
    assert info.value.index == 5 and info.value.user_id == "UBIG"
    assert "row 6 (1-based" in str(info.value) and "UBIG" in str(info.value) and "max_length=1500" in str(info.value)


def test_few_candidates_left_alone(qwen3_tokenizer):
    prompt, gt_id, cands = make_prompt(n_candidates=12, words=4)
    out = _run(qwen3_tokenizer, prompt, gt_id, make_target(gt_id), max_length=20000)
    assert out.prompt == prompt and out.parsed.candidate_ids == cands and not out.record.header_rewritten
