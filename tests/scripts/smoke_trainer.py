"""The smoke configuration built up to a ready trainer, in this process (shared by the test scripts)."""

from __future__ import annotations

import tempfile


def build(backend: str, overrides: list[str], with_eval: bool = True, extra_args: dict | None = None):
    """``(cfg, trainer)`` for ``dualft_music --smoke --backend BACKEND KEY=VALUE...``."""
    from kitrec_fast.backends import get_backend

    mod = get_backend(backend)  # first: unsloth must patch before transformers/trl load
    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.train.cli import build_parser, parse_run_args, resolve_config
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.train.trainer import make_trainer

    p = build_parser("smoke_trainer", False, "")
    cfg = resolve_config("dualft_music", parse_run_args(p, ["--smoke", "--backend", backend, *overrides]))
    tok = load_tokenizer(cfg.data.tokenizer)
    data = prepare(cfg.data, tok)
    model = mod.load_model(cfg).model
    trainer = make_trainer(cfg, model, tok, data.train, data.validation if with_eval else None,
                           tempfile.mkdtemp(), [], extra_args=extra_args)
    return cfg, trainer
