"""Shared fixtures. The offline Qwen3 tokenizer is built once per session (~10 s the first time)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from kitrec_fast.render.tokenizer import load_tokenizer

    return load_tokenizer("offline:qwen3")
