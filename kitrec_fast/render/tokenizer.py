"""Load the tokenizer and pin its pad token.

``offline:qwen3`` builds the offline Qwen3 tokenizer from ``kitrec_fast.testkit``; anything else
goes to ``AutoTokenizer.from_pretrained``. The pad token is forced to ``<|endoftext|>`` (id 151643
in Qwen vocabularies): padding with ``<|im_end|>`` would teach the model that the end-of-turn
token is noise, and vision / im tokens have untrained embeddings in text checkpoints.
"""

from __future__ import annotations

import re
from typing import Any

from kitrec_fast.errors import UserError

OFFLINE_QWEN3 = "offline:qwen3"
PAD_TOKEN = "<|endoftext|>"
_FORBIDDEN_PAD = re.compile(r"<\|(?:im_|vision|image|video|box|quad|object_ref)", re.IGNORECASE)


class TokenizerError(UserError):
    """The tokenizer cannot be used for KitREC rendering; the message names the option."""


def load_tokenizer(name: str, option: str = "data.tokenizer (--tokenizer)") -> Any:
    """``option`` names where ``name`` came from in messages (a run's model name when no tokenizer is set)."""
    if not name:
        raise TokenizerError("data.tokenizer (--tokenizer): must name a tokenizer id, directory or 'offline:qwen3'")
    if name == OFFLINE_QWEN3:
        tok = _offline_qwen3()
    else:
        from kitrec_fast.hub import hub_errors, require_hub

        require_hub(name, "tokenizer", option)
        with hub_errors(name, "tokenizer", option):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name)
    return ensure_pad_token(tok)


def _offline_qwen3() -> Any:
    from kitrec_fast.testkit.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()  # loaded once per process; a fresh copy each call (callers mutate it)


def ensure_pad_token(tok: Any) -> Any:
    """Set the pad token to ``<|endoftext|>`` when the vocabulary has it; refuse vision/im pads."""
    vocab = tok.get_vocab()
    if PAD_TOKEN in vocab:
        tok.pad_token = PAD_TOKEN
    if tok.pad_token is None:
        raise TokenizerError(f"tokenizer has neither {PAD_TOKEN} nor a pad token; set one before rendering")
    if _FORBIDDEN_PAD.search(str(tok.pad_token)):
        raise TokenizerError(f"pad token {tok.pad_token!r} is a vision/im token; it must be {PAD_TOKEN}")
    if not getattr(tok, "chat_template", None):
        raise TokenizerError("tokenizer has no chat_template; KitREC rows are rendered with the model's own template")
    return tok
