"""Model backends: the Unsloth fast path and the plain transformers + bitsandbytes + PEFT baseline.

Each backend module exposes ``load_model(cfg: RunConfig) -> LoadedModel``. They are imported by
name, on demand, because importing unsloth patches transformers and trl for the whole process:
a process that trains the baseline must never import ``unsloth_backend``.
"""

from __future__ import annotations

import importlib

from kitrec_fast.backends.common import runtime_facts  # noqa: F401  (imports nothing heavy)

BACKENDS = {
    "unsloth": "kitrec_fast.backends.unsloth_backend",
    "peft": "kitrec_fast.backends.peft_backend",
}


def get_backend(name: str):
    """Import and return the backend module for ``name`` ('unsloth' or 'peft')."""
    if name not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {name!r}")
    return importlib.import_module(BACKENDS[name])
