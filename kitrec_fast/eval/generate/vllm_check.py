"""What vLLM can serve, checked before its engine starts (an engine start costs minutes).

Each check asks the installed vLLM where it can: a CPU build and a GPU build accept different
models (vLLM's CPU attention has no kernel for some head sizes that its GPU backends serve), so
only what this vLLM would itself refuse is refused. Where vLLM's own API cannot answer (a release
that moved it), nothing is refused and the engine decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from kitrec_fast.backends.common import TINY_MODEL
from kitrec_fast.eval.generate.options import GenerateError

_PREQUANTIZED = ("-bnb-4bit", "-4bit", "-awq", "-gptq")
TINY_HD64 = "testkit:tiny-qwen3-hd64"  # the smoke model's sibling with a head size vLLM's CPU attention takes
WAY_OUT = "use --engine hf (the training backend's model.generate), which serves any head size"


def import_vllm():
    from kitrec_fast.quiet import pass_to_children

    pass_to_children()  # before vLLM reads its log level, and before it spawns its engine
    try:
        import vllm
    except ImportError as exc:
        raise GenerateError(f"--engine vllm needs vLLM, which is not importable here ({exc}); install it "
                            "(pip install -e '.[vllm]'; see the evaluation page, 'Evaluating at scale') or use --engine hf") from None
    return vllm


def vllm_dtype() -> str:
    """The base's precision under vLLM: bf16 (or fp16) on a GPU, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def check_vllm_can_serve(model_path: str, model_name: str, base: str = "original",
                         command: str = "--engine vllm") -> None:
    """Refuse, in one line, a base vLLM cannot serve; before any prompt is built or engine started.

    ``base``: "trained" serves a checkpoint dequantized from the 4-bit weights, which a pre-quantized
    base may give; its head size is the base's. ``command`` opens the message (the option or command
    that asked for vLLM)."""
    if base != "trained":
        check_unquantized_base(model_path)
    vllm = import_vllm()
    head = head_size(model_path)
    if head is None:
        return  # no readable config here: the engine reads it itself and says what is wrong
    refusal = head_size_refusal(head, vllm_dtype())
    if refusal:
        # the smoke run's tiny model: a CPU user who wants to try vLLM can train on its head_dim-64 sibling
        hint = (f" (or train the smoke run with --model {TINY_HD64} to try vLLM here)" if model_name == TINY_MODEL
                else "")
        raise GenerateError(f"{command}: vLLM {vllm.__version__} cannot serve {model_name}: its attention head "
                            f"size is {head}, and {refusal}; {WAY_OUT}{hint}")


def check_unquantized_base(model_path: str) -> None:
    """vLLM serves the adapter on the unquantized base; a checkpoint stored only in 4 bits cannot be that base."""
    quant = None
    config = Path(model_path) / "config.json"
    if config.is_file():
        quant = (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")
    elif model_path.lower().endswith(_PREQUANTIZED):
        quant = model_path.rsplit("-", 1)[-1]
    if quant:
        raise GenerateError(
            f"--engine vllm: {model_path} is a pre-quantized ({quant}) checkpoint; vLLM loads the adapter on the "
            "unquantized base model (bitsandbytes is not among vLLM's quantization methods). Give the 16-bit base "
            "with --model (e.g. Qwen/Qwen3-14B for a run trained on unsloth/Qwen3-14B-bnb-4bit) or use --engine hf")


def check_context(model_path: str, model_name: str, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse, in one line, a context longer than the base's positions: vLLM stops its engine start
    with a traceback there (its max_model_len check), where the hf engine would just go on."""
    from transformers import AutoConfig

    try:
        positions = getattr(AutoConfig.from_pretrained(model_path).get_text_config(), "max_position_embeddings", None)
    except (OSError, ValueError):
        return
    needed = longest_prompt + max_new_tokens
    if positions and needed > positions:
        raise GenerateError(
            f"--engine vllm: the longest prompt ({longest_prompt} tokens) plus --max-new-tokens {max_new_tokens} "
            f"needs {needed} positions, and {model_name} has {positions}; cut the prompts (--max-candidates N or "
            f"--max-prompt-tokens N), lower --max-new-tokens, or use --engine hf")


def head_size(model_path: str) -> Optional[int]:
    """The attention head size as vLLM reads it: ``head_dim``, else hidden size / attention heads."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path).get_text_config()
    except (OSError, ValueError):
        return None
    head = getattr(config, "head_dim", None)
    if head:
        return int(head)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def head_size_refusal(head: int, dtype: str) -> Optional[str]:
    """Why this vLLM's attention cannot take ``head`` (None: it can, or vLLM cannot say).

    vLLM's own backend choice for this platform: a GPU platform picks among its backends one whose
    validation passes (ValueError when none does); the CPU platform always picks its one backend,
    whose kernel then fails at the first forward pass on a head size it lacks, so that backend's
    ``supports_head_size`` is asked here."""
    try:
        import torch
        from vllm.platforms import current_platform
        from vllm.utils.import_utils import resolve_obj_by_qualname
        from vllm.v1.attention.selector import AttentionSelectorConfig

        selector = AttentionSelectorConfig(head_size=head, dtype=getattr(torch, dtype), kv_cache_dtype="auto",
                                           block_size=None)
    except (ImportError, AttributeError, TypeError):
        return None
    try:
        backend = resolve_obj_by_qualname(current_platform.get_attn_backend_cls(None, selector))
    except ValueError as exc:  # no backend of this platform accepts the configuration
        return f"no attention backend of vLLM on {current_platform.device_name.upper()} accepts it ({exc})"
    except Exception:  # noqa: BLE001 - vLLM could not decide here; its engine will
        return None
    if backend.supports_head_size(head):
        return None
    sizes = ", ".join(map(str, backend.get_supported_head_sizes()))
    return f"vLLM's {current_platform.device_name.upper()} attention ({backend.get_name()}) supports head sizes {sizes} only"
