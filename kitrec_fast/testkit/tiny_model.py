"""Tiny random-weight Qwen3 causal LMs: the real architecture and vocabulary, few parameters."""

from __future__ import annotations

import os
from pathlib import Path

from kitrec_fast.fsio import build_dir_atomically
from kitrec_fast.testkit.tokenizer import QWEN3_VOCAB_SIZE, save_qwen3_tokenizer


# The offline test models by name (``model.name``): cache folder and architecture. The first is the
# project's tiny model (head_dim 16); vLLM's CPU attention only takes head sizes 32, 64, 80, 96,
# 112, 128, ..., so the vLLM tests use the second, still tiny, with head_dim 64.
TESTKIT_MODELS: dict[str, tuple[str, dict]] = {
    "testkit:tiny-qwen3": ("tiny-qwen3-v1", {}),
    "testkit:tiny-qwen3-hd64": ("tiny-qwen3-hd64-v1", {"hidden_size": 128, "heads": 2, "kv_heads": 1,
                                                       "intermediate_size": 256}),
}


def tiny_qwen3_config(hidden_size: int = 64, num_layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate_size: int = 128, max_positions: int = 8192):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_positions,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,  # as in Qwen3-14B
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        torch_dtype="float32",
    )


def build_tiny_qwen3(seed: int = 0, **config_kwargs):
    """A randomly initialised ``Qwen3ForCausalLM`` (seeded, so two calls give the same weights)."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_qwen3_config(**config_kwargs))


def save_tiny_qwen3(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Save a tiny Qwen3 plus the offline tokenizer to ``path`` (loadable by any from_pretrained)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path

    def build(folder: Path) -> None:
        build_tiny_qwen3(seed=seed, **config_kwargs).save_pretrained(str(folder), safe_serialization=True)
        save_qwen3_tokenizer(folder)

    build_dir_atomically(path, build, "tokenizer.json")
    return path


def testkit_model_path(name: str, root: str | os.PathLike) -> Path:
    """The directory of the offline test model ``name`` (a ``TESTKIT_MODELS`` key), built once under ``root``."""
    folder, kwargs = TESTKIT_MODELS[name]
    return save_tiny_qwen3(Path(root) / folder, **kwargs)
