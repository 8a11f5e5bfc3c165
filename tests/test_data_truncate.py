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


# -- the evaluation template's layout (suffix-less headers, Format lines, bracketed candidates) ------

def _gen_length(tok, prompt):
    """Generation-prompt length by HF's whole-text path (what evaluation budgets)."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _line_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("n_source,n_target,drops,expected", [
    # hand-simulated: the section with more item lines loses its oldest line; the source on a tie
    (4, 6, 3, {"source_history": 1, "target_history": 2}),
    (4, 6, 5, {"source_history": 2, "target_history": 3}),
    (5, 5, 1, {"source_history": 1, "target_history": 0}),
    (5, 5, 2, {"source_history": 1, "target_history": 1}),
    (6, 2, 3, {"source_history": 3, "target_history": 0}),
])
def test_history_balancing_on_suffixless_template_prompt(qwen3_tokenizer, n_source, n_target, drops, expected):
    from kitrec_documented import template_prompt

    tok = qwen3_tokenizer
    prompt, gt_id, cands = template_prompt(n_source=n_source, n_target=n_target, target_first=False)
    parsed = parse_prompt(prompt)
    src_lines = [ln.text for ln in parsed.source_history.lines if ln.is_item]
    tgt_lines = [ln.text for ln in parsed.target_history.lines if ln.is_item]
    gone = src_lines[: expected["source_history"]] + tgt_lines[: expected["target_history"]]
    budget = _gen_length(tok, prompt) - sum(_line_tokens(tok, t) for t in gone)
    r = get_renderer(tok)
    out = truncate_prompt(parsed, gt_item_id=gt_id, user_id="U1", index=0,
                          measure=lambda p: r.count(r.generation_text(p)), line_costs=r.line_costs,
                          options=TruncateOptions(max_length=budget, max_candidates=100, min_candidates=100))
    assert out.record.history_dropped == expected
    assert out.record.tokens_after == _gen_length(tok, out.prompt) <= budget
    kept_src = [ln.text for ln in out.parsed.source_history.lines if ln.is_item]
    assert kept_src == src_lines[expected["source_history"]:]  # oldest (first) lines went
    assert out.parsed.candidate_ids == cands and "(Total 100):" in out.prompt


def test_eval_time_truncation_trims_suffixless_history_keeps_all_candidates(qwen3_tokenizer):
    from kitrec_documented import FORMAT_LINE, template_prompt

    tok = qwen3_tokenizer
    prompt, gt_id, cands = template_prompt(n_source=20, n_target=10, words=25, tgt="Movies & TV")
    r = get_renderer(tok)
    budget = _gen_length(tok, prompt) - 600
    out = truncate_prompt(parse_prompt(prompt), gt_item_id=gt_id, user_id="U1", index=0,
                          measure=lambda p: r.count(r.generation_text(p)), line_costs=r.line_costs,
                          options=TruncateOptions(max_length=budget, max_candidates=100, min_candidates=100))
    assert out.record.tokens_after == _gen_length(tok, out.prompt) <= budget
    assert out.record.history_lines_dropped > 0 and out.parsed.candidate_ids == cands
    assert out.prompt.count(FORMAT_LINE) == 2 and "\n[\n" in out.prompt and "\n]\n" in out.prompt


def test_candidate_cut_on_template_prompt_keeps_brackets_and_indent(qwen3_tokenizer):
    from kitrec_documented import template_prompt

    prompt, gt_id, cands = template_prompt(gt_pos=99)
    out = _run(qwen3_tokenizer, prompt, gt_id, make_target(gt_id), max_length=100000)
    kept = out.parsed.candidate_ids
    assert len(kept) == 50 and kept[-1] == gt_id and kept == [c for c in cands if c in set(kept)]
    assert "## List of Available Candidate Items (Total 50):\n" in out.prompt
    body = out.prompt.split("(Total 50):\n", 1)[1]
    lines = body.split("\n")
    assert lines[1] == "[" and lines[52] == "]" and all(ln.startswith("  ") for ln in lines[2:52])
