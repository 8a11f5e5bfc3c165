"""``kitrec-fast recommend``: ask a trained model for one user's recommendations.

Usage::

    kitrec-fast recommend --run RUN_DIR --dataset embedded:test_music --row 3
    kitrec-fast recommend --run RUN_DIR --prompt prompt.txt        # or --prompt - to read stdin
    kitrec-fast recommend --run RUN_DIR --prompt - --json < prompt.txt

The prompt is one KitREC-layout prompt: a dataset row (``--dataset``, ``--row`` counted from 1 as
error messages count; the row is validated and rendered exactly as ``eval generate`` does it), or
the prompt text itself (``--prompt``). Every candidate of the prompt is kept, as evaluation keeps
them. What the model is asked is what the prompt asks: an evaluation-style prompt asks for a
top-10 list, a training-style one for one item.

Generation is ``eval generate``'s: the same engines (``--engine hf|vllm``), greedy decoding up to
``--max-new-tokens``, stop at ``<|im_end|>``; or, with ``--server URL``, a running ``kitrec-fast
serve`` is asked for the model named after the run (the prompt's token ids, temperature 0, the
same stop tokens; ``kitrec_fast.serve``). The answer is read by the evaluation parser
(``kitrec_fast.eval.parse``) and ranked by the scoring protocol (``--protocol``, default the
paper's). The table lists every entry the model wrote, in its order; an id that is not among the
prompt's candidates is flagged there (the paper's protocol drops it from the ranking, so its rank
column is empty) rather than silently left out. The reasoning (the ``<think>`` block) follows,
folded to a few lines unless ``--full-reasoning``. ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from kitrec_fast.errors import UserError

REASONING_LINES = 6  # folded reasoning: enough to see the model's line of thought, short enough to read the table


class RecommendError(UserError):
    """A prompt, row or run that `recommend` cannot use."""


@dataclass
class Prompt:
    text: str  # "" when prompt_ids are given
    candidate_ids: list[str]
    source: str  # where it came from, for the output
    prompt_ids: Optional[Sequence[int]] = None  # a dataset row comes tokenized by eval's RowBuilder
    gt_item_id: Optional[str] = None


def add_parser(subparsers: Any) -> None:
    from kitrec_fast.eval.generate.cli import add_model_arguments
    from kitrec_fast.eval.protocol import DEFAULT_PROTOCOL, PROTOCOLS

    from kitrec_fast.clihelp import command

    p = command(subparsers, "recommend", "Ask a trained model for one user's ranked recommendations.",
                "kitrec-fast recommend --run runs/music-smoke --dataset embedded:test_music --row 3",
                "kitrec-fast recommend --run runs/music-smoke --prompt prompt.txt --json",
                description="Ask a trained model for one user's ranked recommendations. The prompt is a dataset "
                            "row (--dataset with --row, validated and rendered as eval generate does) or a "
                            "KitREC-layout prompt text (--prompt FILE, or - for stdin); every candidate is kept.")
    model = p.add_argument_group("model (as `eval generate`)")
    add_model_arguments(model)
    model.add_argument("--max-new-tokens", type=int, default=2048, help="length limit of the answer")
    model.add_argument("--server", metavar="URL",
                       help="ask a running `kitrec-fast serve` (e.g. http://127.0.0.1:8000) for the run's "
                            "model instead of loading an engine here; the prompt is built here as without it")
    src = p.add_argument_group("prompt (one of)")
    src.add_argument("--dataset", help="Hub id, local .jsonl/.json/.parquet, or embedded:NAME (with --row)")
    src.add_argument("--split", default="test", help="dataset split (default test)")
    src.add_argument("--row", type=int, help="row of --dataset, counted from 1")
    src.add_argument("--prompt", help="a file holding one KitREC-layout prompt, or - for stdin")
    out = p.add_argument_group("output")
    out.add_argument("--protocol", choices=list(PROTOCOLS), default=DEFAULT_PROTOCOL,
                     help="how the answer becomes a ranking (as `eval score`)")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    out.add_argument("--full-reasoning", action="store_true", help="print the whole <think> block")
    p.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    result = recommend(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print(result, args.full_reasoning)
    return 0


def _options(args: argparse.Namespace):
    """``eval generate``'s options, so the run, model and engine are resolved and checked the same way."""
    from kitrec_fast.eval.generate import GenerateOptions

    if (args.dataset is None) == (args.prompt is None):
        raise RecommendError("give one prompt: --dataset FILE --row N, or --prompt FILE (- for stdin)")
    if args.dataset is not None and args.row is None:
        raise RecommendError("--dataset needs --row N (the row to recommend for, counted from 1)")
    if args.row is not None and args.dataset is None:
        raise RecommendError("--row needs --dataset")
    if args.row is not None and args.row < 1:
        raise RecommendError(f"--row: rows are counted from 1, got {args.row}")
    return GenerateOptions(dataset=args.dataset or "-", output=Path("."), run_dir=args.run_dir, model=args.model,
                           adapter=args.adapter, backend=args.backend, engine=args.engine, base=args.base,
                           split=args.split,
                           max_new_tokens=args.max_new_tokens, tokenizer=args.tokenizer)


def _dataset_prompt(args: argparse.Namespace, tokenizer: Any, cfg) -> Prompt:
    from kitrec_fast.data.load import DatasetLoadError, load_raw
    from kitrec_fast.eval.generate import RowBuilder

    try:
        raw = load_raw(args.dataset, args.split)
    except DatasetLoadError as exc:
        raise RecommendError(str(exc)) from None
    if args.row > len(raw):
        raise RecommendError(f"--row {args.row}: {args.dataset} has {len(raw)} rows")
    index = args.row - 1
    # every candidate kept, no token budget: the prompt as the paper evaluates it
    (row,) = RowBuilder(tokenizer, cfg, None, None, "error").build([index], [raw[index]])
    return Prompt("", row.candidate_ids, f"{args.dataset} row {args.row}", row.prompt_ids, row.gt_item_id)


def _text_prompt(path: str) -> Prompt:
    from kitrec_fast.truncate.sections import PromptFormatError, parse_prompt

    if path == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(path).read_text(encoding="utf-8"), path
        except (OSError, UnicodeDecodeError) as exc:
            raise RecommendError(f"--prompt: cannot read {path}: {exc}") from None
    if not text.strip():
        raise RecommendError(f"--prompt: {source} is empty")
    try:
        candidates = parse_prompt(text).candidate_ids
    except PromptFormatError:
        candidates = []
    if not candidates:
        raise RecommendError(f"--prompt: {source} is not a KitREC-layout prompt: no candidate items found (a "
                             "'## List of Available Candidate Items' section with '(ID: X)' lines)")
    return Prompt(text, candidates, source)


def recommend(args: argparse.Namespace) -> dict:
    """Generate for one prompt and parse the answer; returns the JSON-ready result."""
    import dataclasses
    import time

    from kitrec_fast.eval.generate import GenerateError, HFEngine, VLLMEngine, resolve_config
    from kitrec_fast.eval.generate.engines import choose_engine
    from kitrec_fast.eval.generate.trained_base import choose_base, served_config, trained_base

    opts = _options(args)
    server = getattr(args, "server", None)
    if server is not None and opts.run_dir is None:
        raise RecommendError("--server needs --run: the server names each model after its run directory")
    if server is not None and opts.base is not None:
        raise RecommendError("--base: the server chose its base when it started; give --base to `kitrec-fast serve`")
    if server is None:
        opts = dataclasses.replace(opts, engine=choose_engine(opts.engine)[0])
    cfg, adapter = resolve_config(opts)
    # a server chose its base when it started (serve's own --base or the runs' key)
    base, base_from = (None, None) if server is not None else choose_base(
        opts.base, [(opts.run_dir.name, cfg)] if opts.run_dir is not None else [], opts.engine)
    text_prompt = _text_prompt(args.prompt) if args.prompt is not None else None  # checked before any loading
    if args.prompt is None:
        from kitrec_fast.data.load import check_dataset

        check_dataset(args.dataset)  # a missing file or an unreachable Hub: before the backend, tokenizer and model
    from kitrec_fast.backends.common import MODEL_OPTION, resolve_model_path
    from kitrec_fast.hub import require_hub

    require_hub(cfg.model.name, "model", MODEL_OPTION)
    if opts.engine == "vllm" and server is None:
        from kitrec_fast.eval.generate.vllm_check import check_vllm_can_serve

        # before the engine starts
        check_vllm_can_serve(resolve_model_path(cfg.model.name), cfg.model.name, base)
    backend_module = None
    if opts.engine == "hf" and server is None:  # before anything imports transformers: unsloth must patch it first
        from kitrec_fast.backends import get_backend

        backend_module = get_backend(cfg.backend)

    from kitrec_fast.eval.generate.command import END_OF_TEXT, IM_END
    from kitrec_fast.render.chat import render_generation_prompt
    from kitrec_fast.render.tokenizer import load_tokenizer

    tokenizer_name = opts.tokenizer or cfg.data.tokenizer or resolve_model_path(cfg.model.name)
    tokenizer = load_tokenizer(tokenizer_name, "--tokenizer" if opts.tokenizer else "the run's data.tokenizer"
                               if cfg.data.tokenizer else "the run's model.name")
    vocab = tokenizer.get_vocab()
    if IM_END not in vocab:
        raise GenerateError(f"tokenizer {tokenizer_name} has no {IM_END}; KitREC models are Qwen3 chat models")
    prompt = text_prompt or _dataset_prompt(args, tokenizer, cfg)
    # a dataset row comes built by eval's RowBuilder (an int32 array); a prompt text is rendered here
    prompt_ids = (list(map(int, prompt.prompt_ids)) if prompt.prompt_ids is not None
                  else render_generation_prompt(tokenizer, prompt.text))
    stop_ids = [vocab[IM_END]] + ([vocab[END_OF_TEXT]] if END_OF_TEXT in vocab else [])
    if server is not None:
        return _ask_server(server, opts.run_dir.name, cfg, prompt, prompt_ids, stop_ids, opts.max_new_tokens,
                           tokenizer, args.protocol)
    if opts.engine == "hf":
        engine: Any = HFEngine(backend_module, served_config(cfg, base), adapter, stop_ids, tokenizer.pad_token_id, opts.max_new_tokens,
                               max_seq_length=len(prompt_ids) + opts.max_new_tokens)
    else:
        from kitrec_fast.eval.generate.command import adapter_rank
        from kitrec_fast.eval.generate.vllm_check import check_context

        if base == "trained":
            model_path = trained_base(cfg)[0]
        else:
            model_path = resolve_model_path(cfg.model.name)
        check_context(model_path, cfg.model.name, len(prompt_ids), opts.max_new_tokens)
        engine = VLLMEngine(model_path, {"adapter": (adapter, adapter_rank(adapter))} if adapter else {}, stop_ids,
                            opts.max_new_tokens, max_model_len=len(prompt_ids) + opts.max_new_tokens, max_num_seqs=1,
                            seed=cfg.train.seed)
    t0 = time.perf_counter()
    (gen,) = engine.generate([prompt_ids], adapter="adapter" if adapter else None)
    seconds = time.perf_counter() - t0
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=False)
    return {
        "prompt": prompt.source, "model": cfg.model.name, "adapter": adapter, "engine": opts.engine, "base": base,
        "base_from": base_from,
        "candidates": len(prompt.candidate_ids), "prompt_tokens": len(prompt_ids),
        "new_tokens": gen.new_tokens, "finished": gen.finished, "seconds": round(seconds, 3),
        **read_answer(text, prompt.candidate_ids, args.protocol, prompt.gt_item_id),
    }


def _ask_server(server: str, model: str, cfg, prompt: Prompt, prompt_ids: list[int], stop_ids: list[int],
                max_new_tokens: int, tokenizer: Any, protocol: str) -> dict:
    """The prompt's ids to a ``kitrec-fast serve`` server (greedy, the run's stop tokens); the answer
    read as an engine's answer is read here."""
    import time

    from kitrec_fast.eval.generate.engines import Generated, cut_at_stop
    from kitrec_fast.serve import complete

    t0 = time.perf_counter()
    choice = complete(server, model, prompt_ids, stop_ids, max_new_tokens)
    seconds = time.perf_counter() - t0
    cut = cut_at_stop(list(choice["token_ids"]), stop_ids)
    gen = Generated(cut.token_ids, cut.finished or choice.get("finish_reason") == "stop")
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=False)
    return {
        "prompt": prompt.source, "model": cfg.model.name, "adapter": model, "engine": f"server {server}",
        "candidates": len(prompt.candidate_ids), "prompt_tokens": len(prompt_ids),
        "new_tokens": gen.new_tokens, "finished": gen.finished, "seconds": round(seconds, 3),
        **read_answer(text, prompt.candidate_ids, protocol, prompt.gt_item_id),
    }


def read_answer(text: str, candidate_ids: list[str], protocol: str, ground_truth: Optional[str] = None) -> dict:
    """The model's answer as the evaluation reads it: every entry in emitted order, with its rank
    under ``protocol`` and whether its id is one of the prompt's candidates."""
    from kitrec_fast.eval.parse import parse_recommendations
    from kitrec_fast.eval.protocol import ranked_list

    parsed = parse_recommendations(text, candidate_ids)
    ranking = ranked_list(parsed, protocol)
    rank_of = _ranks(parsed.entries, protocol)
    seen: set[str] = set()
    entries = []
    for k, e in enumerate(parsed.entries):
        entries.append({"rank": rank_of[k], "item_id": e.item_id or e.emitted, "title": e.title,
                        "confidence_score": e.confidence, "rationale": e.rationale,
                        "is_candidate": e.item_id is not None, "repeat": e.item_id in seen})
        if e.item_id is not None:
            seen.add(e.item_id)
    return {
        "protocol": protocol, "ground_truth": ground_truth,
        "ranked_ids": [x for x in ranking if x is not None], "entries": entries,
        "invalid_ids": [e.emitted for e in parsed.entries if e.item_id is None],
        "parse_failed": parsed.parse_failed, "think_closed": parsed.think_closed, "truncated": parsed.truncated,
        "reasoning": _reasoning(text), "raw_text": text,
    }


def _ranks(entries: list, protocol: str) -> list[Optional[int]]:
    """Each emitted entry's rank under ``protocol`` (None: the protocol drops it, e.g. an invalid id)."""
    if protocol != "kitrec":  # strict: every entry keeps its slot
        return list(range(1, len(entries) + 1))
    ranks, rank = [], 0
    for e in entries:
        if e.item_id is None:
            ranks.append(None)
        else:
            rank += 1
            ranks.append(rank)
    return ranks


def _reasoning(text: str) -> str:
    """The ``<think>`` block's text ("" without one); an unclosed block runs to the end."""
    start = text.find("<think>")
    if start < 0:
        return ""
    end = text.find("</think>", start)
    return text[start + len("<think>"): end if end >= 0 else None].strip()


def _print(result: dict, full_reasoning: bool, console: Any = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from kitrec_fast.console import make_console

    console = console or make_console()
    gt = result["ground_truth"]
    table = Table(title=f"recommendations for {escape(result['prompt'])} ({result['candidates']} candidates; "
                        f"{result['model']} + {escape(str(result['adapter'] or 'no adapter'))}, {result['engine']}"
                        + (f", base {result['base']}" if result.get("base") else "") + ")")
    for col in ("rank", "item id", "title", "confidence", "rationale"):
        table.add_column(col, justify="right" if col in ("rank", "confidence") else "left",
                         overflow="fold", max_width=60 if col == "rationale" else None)
    for e in result["entries"]:
        item = escape(str(e["item_id"]))
        if not e["is_candidate"]:
            item += " [bold red](not a candidate)[/]"
        elif e["repeat"]:
            item += " [yellow](repeated)[/]"
        elif gt is not None and e["item_id"] == gt:
            item += " [green](ground truth)[/]"
        conf = e["confidence_score"]
        table.add_row("-" if e["rank"] is None else str(e["rank"]), item, escape(e["title"] or ""),
                      "" if conf is None else f"{conf:g}", escape(e["rationale"] or ""))
    console.print(table)
    if result["parse_failed"]:
        console.print("[bold red]no recommendation list[/] could be read from the answer (raw answer below)")
    if result["invalid_ids"]:
        console.print(f"[red]{len(result['invalid_ids'])} id(s) not among the prompt's candidates[/] "
                      f"({result['protocol']} protocol: " + ("dropped from the ranking)" if result["protocol"] == "kitrec"
                                                            else "they keep their slot)"))
    if not result["finished"]:
        console.print(f"[yellow]the answer hit --max-new-tokens ({result['new_tokens']} new tokens)[/]; "
                      "it may be cut off")
    reasoning = result["reasoning"] if not result["parse_failed"] else result["raw_text"]
    if reasoning:
        lines = reasoning.splitlines()
        shown = lines if full_reasoning else lines[:REASONING_LINES]
        console.rule("reasoning" if not result["parse_failed"] else "answer")
        console.print(escape("\n".join(shown)))
        if len(shown) < len(lines):
            console.print(f"[dim]... {len(lines) - len(shown)} more lines (--full-reasoning shows them, --json has "
                          "the whole text)[/]")
