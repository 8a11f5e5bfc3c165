import contextlib

import numpy as np
import pytest

from kitrec_fast.render.chat import ChatRenderer, RenderError, get_renderer, render_example, render_generation_prompt
from kitrec_fast.render.tokenizer import TokenizerError, ensure_pad_token
from kitrec_prompts import make_prompt, make_target


def test_offline_special_token_ids(qwen3_tokenizer):
    ids = qwen3_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"])
    assert ids == [151644, 151645, 151667, 151668, 151643]
    assert qwen3_tokenizer.pad_token == "<|endoftext|>" and qwen3_tokenizer.pad_token_id == 151643


def _hf_ids(tok, prompt, target):
    """HF's own whole-text tokenization of the conversation, trailing newline removed."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                                   tokenize=False)
    assert text.endswith("<|im_end|>\n")
    return tok(text[:-1], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("gt", ["first", "last"])
def test_mask_covers_exactly_the_assistant_turn(qwen3_tokenizer, gt):
    tok = qwen3_tokenizer
    prompt, gt_id, _ = make_prompt(n_candidates=10, gt=gt)
    target = make_target(gt_id)
    ids, labels = render_example(tok, prompt, target)
    assert ids == _hf_ids(tok, prompt, target)
    assert len(ids) == len(labels)
    start = next(i for i, lab in enumerate(labels) if lab != -100)
    assert all(lab == -100 for lab in labels[:start])
    assert labels[start:] == ids[start:]
    assert ids[start] == 151667 and ids[-1] == 151645  # <think> ... <|im_end|>, no trailing "\n"
    reasoning, answer = target.split("</think>\n")
    assert tok.decode(ids[start:]) == reasoning + "</think>\n\n" + answer + "<|im_end|>"
    gen = render_generation_prompt(tok, prompt)
    assert gen == ids[:start]
    assert gen == tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
    assert tok.decode(gen).endswith("<|im_start|>assistant\n")


def test_chunked_counting_matches_whole_text(qwen3_tokenizer):
    r = get_renderer(qwen3_tokenizer)
    assert r.chunked
    texts = [make_prompt(words=w, cand_style="mixed", hist_style="list")[0] for w in (3, 20)]
    texts += ["a\n\n\n  b\n\tc\r\nd  \n\ne", "x" * 3 + "\n" * 5, "", "caf\u00e9\n\u65e5\u672c\n\U0001f3b5\n"]
    for t in texts:
        assert r.encode(t).tolist() == qwen3_tokenizer(t, add_special_tokens=False)["input_ids"]
        assert r.count(t) == len(r.encode(t))


def test_line_costs(qwen3_tokenizer):
    r = get_renderer(qwen3_tokenizer)
    lines = ["(ID: A1) x | y\n", "\n", "- t | u\n"]
    assert r.line_costs(lines) == [len(qwen3_tokenizer(ln, add_special_tokens=False)["input_ids"]) for ln in lines]


@contextlib.contextmanager
def _with_template(tok, template):
    # swapped in place and restored: deep-copying a 150k-token tokenizer costs seconds
    saved = tok.chat_template
    tok.chat_template = template
    try:
        yield tok
    finally:
        tok.chat_template = saved


def test_prefix_violation_raises(qwen3_tokenizer):
    # renders the user turn differently once an assistant turn exists
    bad = ("{%- for m in messages -%}{{ '<|im_start|>' + m.role + '\\n' + m.content }}"
           "{%- if messages|length > 1 %} (answered){% endif %}{{ '<|im_end|>\\n' }}{%- endfor -%}"
           "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
    with _with_template(qwen3_tokenizer, bad) as tok, pytest.raises(RenderError, match="prefix"):
        ChatRenderer(tok).render("hello\n## x", "<think>\na\n</think>\nb")


def test_think_in_generation_prompt_raises(qwen3_tokenizer):
    tmpl = qwen3_tokenizer.chat_template.replace(
        "{%- if enable_thinking is defined and enable_thinking is false -%}", "{%- if true -%}")
    # the generation prompt pre-fills an empty think block the training text does not have
    with _with_template(qwen3_tokenizer, tmpl) as tok, pytest.raises(RenderError, match="prefix"):
        ChatRenderer(tok).render("hello", "<think>\na\n</think>\nb")


class _Vocab:
    """A tokenizer-shaped object: enough surface for ensure_pad_token."""

    def __init__(self, vocab, pad, template="x"):
        self._v, self.pad_token, self.chat_template = vocab, pad, template

    def get_vocab(self):
        return self._v


def test_pad_token_policy(qwen3_tokenizer):
    tok = qwen3_tokenizer
    tok.pad_token = "<|im_end|>"
    assert ensure_pad_token(tok).pad_token_id == 151643
    with pytest.raises(TokenizerError, match="vision/im"):
        ensure_pad_token(_Vocab({"<|vision_pad|>": 1}, "<|vision_pad|>"))
    with pytest.raises(TokenizerError, match="pad token"):
        ensure_pad_token(_Vocab({"a": 1}, None))
    with pytest.raises(TokenizerError, match="chat_template"):
        ensure_pad_token(_Vocab({"<|endoftext|>": 1}, "<|endoftext|>", template=None))
