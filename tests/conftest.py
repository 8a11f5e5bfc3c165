"""Shared fixtures. The offline Qwen3 tokenizer is built once per session (~10 s the first time)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from kitrec_fast.render.tokenizer import load_tokenizer

    return load_tokenizer("offline:qwen3")


@pytest.fixture(scope="session")
def lora_run_dir(tmp_path_factory):
    """One run directory (resolved config + random LoRA adapter on the tiny Qwen3) for the eval tests that only read it."""
    from lora_runs import make_lora_run

    return make_lora_run(tmp_path_factory.mktemp("lora_run") / "run", "tests/conftest.py")
