"""Offline stand-ins for the Hub: a Qwen3-compatible tokenizer and tiny random Qwen3 models."""

from kitrec_fast.testkit.tokenizer import build_qwen3_tokenizer, QWEN3_ADDED_TOKENS
from kitrec_fast.testkit.tiny_model import TESTKIT_MODELS, build_tiny_qwen3, save_tiny_qwen3, testkit_model_path

__all__ = ["build_qwen3_tokenizer", "QWEN3_ADDED_TOKENS", "build_tiny_qwen3", "save_tiny_qwen3",
           "TESTKIT_MODELS", "testkit_model_path"]
