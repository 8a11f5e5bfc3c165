"""Render a row as a chat conversation and mask everything but the assistant turn.

Text comes from the tokenizer's own chat template: the user turn is the prompt, the assistant
turn the target. Qwen3's template rewrites the assistant content as
``<think>\\n{reasoning}\\n</think>\\n\\n{answer}``, so the trained text is the template's version of
the target, which is what the model produces at inference.

Labels: -100 on every token of the generation prompt (``...<|im_start|>assistant\\n``); the trained
tokens are exactly the assistant turn from ``<think>`` through ``<|im_end|>``. The template's
trailing ``"\\n"`` after the final ``<|im_end|>`` is *dropped* from the sequence (not just masked):
the model never generates it, and the sequence then ends on the end-of-turn token. Every row is
checked: the generation-prompt rendering must be a token-exact prefix of the full rendering, the
first trained token must be ``<think>`` (when the vocabulary has one) and the last ``<|im_end|>``;
any failure raises RenderError (a template problem is never silently skipped).

Speed: tokenizing 12,000 prompts of 5-8k tokens is the dominant cost, and most of that text
repeats across rows (preamble, task sections, popular items). Texts are therefore cut into
*chunks* at every ``"\\n"`` that is followed by a non-whitespace character, each distinct chunk is
tokenized once (in batches) and a text's ids are the concatenation of its chunks' ids. For
Qwen-style byte-level BPE this is exact: no pre-tokenizer match can cross such a boundary
(newline runs, punctuation+newline and whitespace runs all end there, and words never start
with a newline), and added tokens are split out before pre-tokenization. Because that argument
depends on the tokenizer, ChatRenderer proves it empirically on probe texts when it is built and
falls back to whole-text tokenization (slower, still exact) when the probe disagrees; the
pipeline additionally re-tokenizes a sample of final rows in full.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from kitrec_fast.errors import UserError

IM_END = "<|im_end|>"
THINK = "<think>"
_CHUNK = re.compile(r"[^\n]*(?:\n(?!\S)[^\n]*)*\n?")

_PROBE_PROMPT = (
    "# Expert Cross-Domain Recommendation System\n\nYou are an expert.\n\n## Input Parameters\n"
    "- Source Domain: Books\n- Target Domain: Music\n\n## User Interaction History\n"
    "### User's Books History (Source Domain):\n"
    "(ID: B07FLGJWKB) Rock & Roll! | Pop, Rock | Rating: 4.0 | \"great\"...\n"
    "[Item: B00E9E5EEK] | Unknown | Rating: 2.0\n  indented line\n\ttab line\n"
    "trailing spaces   \n\n\n1234567 numbers 3.14 (ID: 0812345678)\r\ncarriage\u2028sep caf\u00e9 "
    "nai\u0308ve \u65e5\u672c\u8a9e \U0001f3b5 don't I'm\n  \n - x\n-- y\n...\n!!\n\n"
    "## List of Available Candidate Items (100 items):\n1. (ID: A1) x\n\n## Your Task\nEnd."
)
_PROBE_TARGET = (
    "<think>\n**Source Domain Pattern Analysis:**\nReads 5 books.\n\n  - a\n</think>\n"
    "```json\n{\"rank\": 1, \"item_id\": \"A1\", \"confidence_score\": 9.5}\n```"
)


class RenderError(UserError):
    """The chat template does not render a row the way label masking requires."""


@dataclass
class Rendered:
    input_ids: np.ndarray  # int32, ends with <|im_end|>
    prompt_length: int  # tokens of the generation prompt, all masked

    @property
    def labels(self) -> np.ndarray:
        """int32 copy of the ids with -100 on the prompt (built on demand: 12k rows of labels are 200+ MB)."""
        labels = self.input_ids.copy()
        labels[: self.prompt_length] = -100
        return labels

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_trained(self) -> int:
        return self.length - self.prompt_length


def split_chunks(text: str) -> list[str]:
    out = _CHUNK.findall(text)
    if out and out[-1] == "":
        out.pop()
    return out


def _return_free_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and RSS would not drop)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by the process, just not returned
        pass


CACHE_GENERATION = 1 << 15  # chunks per cache generation (see ChunkCache): ~45 MB of RSS each


class ChunkCache:
    """Token ids of text chunks, bounded: two generations, the newer promoting what is used again.

    A prepare run meets ~27 distinct chunks per row, most of them once (a user's own history lines,
    the reasoning of the target), so keeping every chunk grew the process by ~37 KB per row. Lookups
    fill ``new``; a hit in ``old`` is copied into ``new``; ``rotate()`` (called at points where no
    caller holds a lookup it still needs) drops ``old`` and starts a fresh ``new`` once ``new`` holds
    ``generation`` chunks. What is in use keeps being promoted (the preamble, popular items), what
    was seen once ages out within two generations, and memory stays at most ~2 generations.
    """

    def __init__(self, generation: int = CACHE_GENERATION):
        if generation < 1:
            raise ValueError(f"generation: must be >= 1, got {generation}")
        self.generation = generation
        self.new: dict[str, np.ndarray] = {}
        self.old: dict[str, np.ndarray] = {}
        self.stored = 0  # chunks tokenized and stored, evicted ones counted again when re-tokenized

    def get(self, chunk: str):
        ids = self.new.get(chunk)
        if ids is None:
            ids = self.old.get(chunk)
            if ids is not None:
                self.new[chunk] = ids
        return ids

    def store(self, keys: list[str], ids: list[list[int]]) -> None:
        new = self.new
        for k, i in zip(keys, ids):
            new[k] = np.asarray(i, dtype=np.int32)
        self.stored += len(keys)

    def rotate(self) -> None:
        if len(self.new) >= self.generation:
            self.old, self.new = self.new, {}

    def clear(self) -> None:
        self.new, self.old = {}, {}

    def __len__(self) -> int:
        return len(self.new) + sum(1 for k in self.old if k not in self.new)


class ChatRenderer:
    """Chat rendering plus exact, cached token counting for one tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template
        self._cache = ChunkCache()
        self._backend = self._plain_backend(tokenizer)
        vocab = tokenizer.get_vocab()
        self.end_text = IM_END if IM_END in vocab else tokenizer.eos_token
        if not self.end_text:
            raise RenderError("tokenizer has neither <|im_end|> nor an eos token to end the assistant turn")
        self.end_id = int(vocab[self.end_text])
        self.think_id = int(vocab[THINK]) if THINK in vocab else None
        self._pool = None
        self._futures: list = []
        self._pending: dict[str, str] = {}
        self.chunked = True
        self.chunked = self._chunking_is_exact()

    @staticmethod
    def _plain_backend(tokenizer: Any):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        if backend.truncation is not None or backend.padding is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        return backend

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._backend is not None:
            if len(texts) <= 4:  # a batch call costs a thread-pool round trip; a few short lines are cheaper alone
                return [self._backend.encode(t, add_special_tokens=False).ids for t in texts]
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def full_encode(self, text: str) -> np.ndarray:
        """Whole-text tokenization, no chunking: the reference the chunked path must match."""
        return np.asarray(self._encode_batch([text])[0], dtype=np.int32)

    def _chunking_is_exact(self) -> bool:
        gen, full = self.conversation_texts(_PROBE_PROMPT, _PROBE_TARGET)
        probes = [gen, full, _PROBE_PROMPT, _PROBE_TARGET, "a\n\nb", "x  \n y\nz", "\n\n\nq"]
        return all(np.array_equal(self.encode(p), self.full_encode(p)) for p in probes)

    # -- token counting -------------------------------------------------------------------
    def warm(self, texts: Iterable[str]) -> int:
        """Tokenize, in one batch, every chunk of ``texts`` not cached; returns how many."""
        if not self.chunked:
            return 0
        self._cache.rotate()
        get = self._cache.get
        keys = list(dict.fromkeys(c for text in texts for c in split_chunks(text) if get(c) is None))
        self._cache.store(keys, self._encode_batch(keys))
        return len(keys)

    def _arrays(self, chunks: Sequence[str]) -> list[np.ndarray]:
        """The ids of each of ``chunks``, tokenizing those not cached in one batch (never a miss)."""
        cache = self._cache
        cache.rotate()
        get = cache.get
        arrays = [get(c) for c in chunks]
        missing = list(dict.fromkeys(c for c, a in zip(chunks, arrays) if a is None))
        if missing:
            cache.store(missing, self._encode_batch(missing))
            arrays = [get(c) if a is None else a for c, a in zip(chunks, arrays)]
        return arrays

    def prefetch(self, texts: Iterable[str]) -> list[tuple[int, list[str]]]:
        """Start tokenizing the unseen chunks of ``texts`` in a background thread.

        Returns, per text, the tokens of its already-cached chunks and the list of its chunks still
        being tokenized (``pending_count`` totals them after ``drain()``). The Rust tokenizer
        releases the GIL, so the caller parses the next rows meanwhile.
        """
        if not self.chunked:
            raise RenderError("prefetch needs chunked tokenization, which this tokenizer does not support")
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kitrec-tokenize")
        self._cache.rotate()
        get, pending = self._cache.get, self._pending
        out, new = [], []
        for text in texts:
            known, waiting = 0, []
            for c in split_chunks(text):
                ids = get(c)
                if ids is not None:
                    known += len(ids)
                    continue
                shared = pending.get(c)
                if shared is None:
                    pending[c] = shared = c
                    new.append(c)
                waiting.append(shared)  # the shared object: one copy of each chunk string in memory
            out.append((known, waiting))
        if new:
            self._futures.append(self._pool.submit(lambda keys=new: (keys, self._encode_batch(keys))))
        return out

    def prefetch_lines(self, lines: Iterable[str]) -> None:
        """Like ``prefetch`` for texts known to be a single chunk each (prompt lines): no splitting."""
        get, pending = self._cache.get, self._pending
        new = []
        for ln in lines:
            if ln not in pending and get(ln) is None:
                pending[ln] = ln
                new.append(ln)
        if new:
            self._futures.append(self._pool.submit(lambda keys=new: (keys, self._encode_batch(keys))))

    def pending_count(self, partial: tuple[int, list[str]]) -> int:
        """Exact token count of a text from its ``prefetch`` entry (after ``drain()``)."""
        return partial[0] + sum(len(a) for a in self._arrays(partial[1]))

    @property
    def chunks_tokenized(self) -> int:
        """Chunks tokenized so far (a chunk evicted and met again counts again): the cache's work."""
        return self._cache.stored

    def clear(self) -> None:
        """Forget every cached chunk (the cache only speeds up the call that filled it)."""
        self.drain()
        self._cache.clear()
        _return_free_memory()

    def drain(self) -> None:
        """Wait for every prefetch and move its ids into the cache."""
        futures, self._futures = self._futures, []
        for f in futures:
            self._cache.store(*f.result())
        self._pending.clear()

    def encode(self, text: str) -> np.ndarray:
        if not self.chunked:
            return self.full_encode(text)
        arrays = self._arrays(split_chunks(text))
        if not arrays:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate(arrays)

    def count(self, text: str) -> int:
        if not self.chunked:
            return len(self.full_encode(text))
        return sum(len(a) for a in self._arrays(split_chunks(text)))

    def line_costs(self, lines: Sequence[str]) -> list[int]:
        """Tokens of each line on its own: the planning estimate for removing that line."""
        if not self.chunked:
            return [len(self.full_encode(ln)) for ln in lines]
        return [len(a) for a in self._arrays(lines)]

    # -- chat rendering ---------------------------------------------------------------------
    def conversation_texts(self, prompt: str, target: str) -> tuple[str, str]:
        """``(generation prompt text, full conversation text)`` from the chat template."""
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}], tokenize=False)
        return self.generation_text(prompt), full

    def generation_text(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    def body_text(self, prompt: str, target: str) -> str:
        """The full conversation up to and including the final end-of-turn token (what is trained on)."""
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}], tokenize=False)
        end = full.rfind(self.end_text)
        if end < 0 or full[end + len(self.end_text):].strip():
            raise RenderError(f"the rendered assistant turn does not end with {self.end_text}")
        return full[: end + len(self.end_text)]  # the trailing "\n" is dropped, see module docstring

    def conversation_length(self, prompt: str, target: str) -> int:
        """Exact token count of ``render(prompt, target).input_ids``, without building the arrays."""
        return self.count(self.body_text(prompt, target))

    def generation_prompt(self, prompt: str) -> np.ndarray:
        return self.encode(self.generation_text(prompt))

    def render(self, prompt: str, target: str) -> Rendered:
        gen_text = self.generation_text(prompt)
        body = self.body_text(prompt, target)
        if not body.startswith(gen_text) or len(body) == len(gen_text):
            raise RenderError("the chat template renders the user turn differently once the assistant turn "
                              "is added, so the generation prompt is not a prefix of the training text")
        ids, n = self._encode_with_prefix(body, gen_text)
        if self.think_id is not None and ids[n] != self.think_id:
            got = self.tokenizer.convert_ids_to_tokens(int(ids[n]))
            raise RenderError(f"the assistant turn starts with {got!r}, expected <think>: the template "
                              "or the generation prompt already contains the think block")
        if ids[-1] != self.end_id:
            raise RenderError(f"the rendering does not end with {self.end_text}")
        return Rendered(ids, n)

    def _encode_with_prefix(self, body: str, gen_text: str) -> tuple[np.ndarray, int]:
        """Ids of ``body`` and the length of its generation-prompt prefix, proven token-exact.

        When ``body`` has a chunk boundary exactly where ``gen_text`` ends, the chunks of
        ``gen_text`` are the first chunks of ``body`` (same strings, so the same cached ids) and the
        prefix property holds by construction. Otherwise both are tokenized and compared.
        """
        if self.chunked:
            parts = split_chunks(body)
            arrays = self._arrays(parts)
            end, n = 0, 0
            for c, a in zip(parts, arrays):
                if end >= len(gen_text):
                    break
                end += len(c)
                n += len(a)
            ids = np.concatenate(arrays)
            if end == len(gen_text):
                return ids, n
        else:
            ids = self.full_encode(body)
        gen_ids = self.encode(gen_text)
        n = len(gen_ids)
        if len(ids) <= n or not np.array_equal(ids[:n], gen_ids):
            raise RenderError("the generation prompt is not a token-exact prefix of the full rendering "
                              "(the template or tokenizer merges tokens across the assistant boundary)")
        return ids, n


_RENDERERS: "weakref.WeakKeyDictionary[Any, ChatRenderer]" = weakref.WeakKeyDictionary()


def get_renderer(tokenizer: Any) -> ChatRenderer:
    """The shared renderer of ``tokenizer`` (its chunk cache lives as long as the tokenizer)."""
    r = _RENDERERS.get(tokenizer)
    if r is None or r.template != tokenizer.chat_template:
        r = ChatRenderer(tokenizer)
        _RENDERERS[tokenizer] = r
    return r


def render_example(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one row; labels are -100 on every prompt token."""
    r = get_renderer(tokenizer).render(prompt, target)
    return r.input_ids.tolist(), r.labels.tolist()


def render_generation_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Input ids for generation: the user turn plus ``<|im_start|>assistant\\n`` (same code path as training)."""
    return get_renderer(tokenizer).generation_prompt(prompt).tolist()
