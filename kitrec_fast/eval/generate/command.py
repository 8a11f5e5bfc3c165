"""``eval generate``: the command itself (see the package docstring for behaviour and files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from kitrec_fast.eval.generate.engines import Generated, HFEngine, VLLMEngine
from kitrec_fast.eval.generate.options import (CONFIG_FILE, PREDICTIONS_FILE, GenerateError, GenerateOptions,
                                               resolve_config)
from kitrec_fast.eval.generate.resume import check_fingerprint, output_lock, read_done
from kitrec_fast.eval.generate.rows import EvalRow, RowBuilder, select_rows
from kitrec_fast.fsio import atomic_write_json

PAUSE_ENV = "KITREC_FAST_GENERATE_PAUSE_S"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
# Pending rows tokenized/truncated at a time: bounds memory (30,000 test prompts of ~20k characters
# would be ~600 MB of strings) while giving length-sorting enough rows to form tight batches.
WINDOW_BATCHES = 32


def longest_prompt(builder: RowBuilder, raw: Sequence[dict], pending: Sequence[int], window: int) -> int:
    """Tokens of the longest generation prompt among ``pending`` (0 if every one is a skipped bad row)."""
    longest = 0
    for start in range(0, len(pending), window):
        chunk = pending[start: start + window]
        longest = max([longest] + [len(r.prompt_ids) for r in builder.build(chunk, [raw[i] for i in chunk])])
    return longest


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        """Rows/s over this session's rows (rows done by an earlier run are the starting point)."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- rows/s" if speed is None else f"{speed:.2f} rows/s", style="progress.data.speed")

    return Progress(TextColumn("[bold]generate[/]"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    speed_estimate_period=600.0)


def run_generate(opts: GenerateOptions, console=None, command: str = "") -> dict:
    """Generate for every selected row not yet in ``OUT/predictions.jsonl``; returns a summary."""
    from kitrec_fast.console import make_console

    console = console or make_console()
    batch_size = opts.effective_batch_size
    cfg, adapter = resolve_config(opts)
    max_candidates = opts.max_candidates  # None: every candidate of the prompt

    # The backend module before anything imports transformers: unsloth must patch it first.
    backend_module = None
    if opts.engine == "hf":
        from kitrec_fast.backends import get_backend

        backend_module = get_backend(cfg.backend)

    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.load import DatasetLoadError, load_raw
    from kitrec_fast.render.tokenizer import load_tokenizer

    out_dir = Path(opts.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / PREDICTIONS_FILE
    tokenizer_name = opts.tokenizer or cfg.data.tokenizer or resolve_model_path(cfg.model.name)
    fingerprint = {
        "model": cfg.model.name, "adapter": str(Path(adapter).resolve()) if adapter else None,
        "backend": cfg.backend if opts.engine == "hf" else None, "engine": opts.engine,
        "dataset": opts.dataset, "split": opts.split, "max_new_tokens": opts.max_new_tokens,
        "max_candidates": max_candidates or "all", "max_prompt_tokens": opts.max_prompt_tokens,
        "candidate_seed": cfg.data.split_seed if (max_candidates or opts.max_prompt_tokens) else None,
        "tokenizer": opts.tokenizer or cfg.data.tokenizer or cfg.model.name,
    }

    with output_lock(out_dir):
        check_fingerprint(out_dir, fingerprint)
        done = read_done(pred_path, notice=lambda line: console.print(f"[yellow]predictions[/] {line}"))
        try:
            raw = load_raw(opts.dataset, opts.split)
        except DatasetLoadError as exc:
            raise GenerateError(str(exc)) from None
        selected = select_rows(raw, opts.user_types, opts.limit)
        pending = [i for i in selected if i not in done]
        already = len(selected) - len(pending)
        config = {
            "fingerprint": fingerprint, "command": command, "run_dir": str(opts.run_dir) if opts.run_dir else None,
            "batch_size": batch_size, "limit": opts.limit, "user_types": opts.user_types,
            "decoding": {"greedy": True, "stop_tokens": [IM_END, END_OF_TEXT], "pad_token": END_OF_TEXT,
                         "padding_side": "left"},
            "truncation": {"max_candidates": max_candidates or "all", "max_prompt_tokens": opts.max_prompt_tokens,
                           "min_candidates": cfg.data.min_candidates, "history_recent": cfg.data.history_recent,
                           "seed": cfg.data.split_seed},
            "rows": {"loaded": len(raw), "selected": len(selected), "already_done": already,
                     "pending": len(pending)},
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        console.print(f"[green]rows[/] {len(selected)} selected from {opts.dataset} ({opts.split}, {len(raw)} rows); "
                      f"{already} already in {pred_path}, {len(pending)} to generate")
        summary = {"output": str(pred_path), "selected": len(selected), "already_done": already,
                   "generated": 0, "skipped": [], "seconds": 0.0}
        if not pending:
            atomic_write_json(out_dir / CONFIG_FILE, config)
            return summary

        tokenizer = load_tokenizer(tokenizer_name)
        vocab = tokenizer.get_vocab()
        if IM_END not in vocab:
            raise GenerateError(f"tokenizer {tokenizer_name} has no {IM_END}; KitREC models are Qwen3 chat models")
        stop_ids = [vocab[IM_END]] + ([vocab[END_OF_TEXT]] if END_OF_TEXT in vocab else [])
        pad_id = tokenizer.pad_token_id
        builder = RowBuilder(tokenizer, cfg, max_candidates, opts.max_prompt_tokens, opts.on_bad_row)
        window = batch_size * WINDOW_BATCHES
        # Unsloth sizes RoPE/cache buffers from max_seq_length: size it from the prompts this run
        # will really send (100-candidate test prompts are longer than any training prompt), not
        # from the training data.max_length. The pass also finds bad rows before the model loads.
        longest = longest_prompt(builder, raw, pending, window)
        max_seq_length = longest + opts.max_new_tokens
        config["prompts"] = {"longest_tokens": longest, "max_seq_length": max_seq_length}
        atomic_write_json(out_dir / CONFIG_FILE, config)
        if not longest:
            summary["skipped"] = builder.skipped
            _report_skipped(console, builder.skipped)
            return summary
        console.print(f"[green]prompts[/] longest {longest} tokens; candidates: "
                      f"{'all' if not max_candidates else f'cut to {max_candidates}'}")

        t_load = time.perf_counter()
        if opts.engine == "hf":
            engine: Any = HFEngine(backend_module, cfg, adapter, stop_ids, pad_id, opts.max_new_tokens,
                                   max_seq_length=max_seq_length)
        else:
            engine = VLLMEngine(cfg, resolve_model_path(cfg.model.name), tokenizer_name, adapter, stop_ids,
                                opts.max_new_tokens)
        console.print(f"[green]model[/] {cfg.model.name} + {adapter or 'no adapter'} "
                      f"({opts.engine}{'/' + cfg.backend if opts.engine == 'hf' else ''}) "
                      f"loaded in {time.perf_counter() - t_load:.1f}s")

        pause = float(os.environ.get(PAUSE_ENV) or 0)
        t0 = time.perf_counter()
        with _progress(console) as progress, open(pred_path, "a", encoding="utf-8") as fh:
            task = progress.add_task("generate", total=len(selected), completed=already)
            for start in range(0, len(pending), window):
                chunk = pending[start: start + window]
                rows = builder.build(chunk, [raw[i] for i in chunk])
                progress.advance(task, len(chunk) - len(rows))  # skipped bad rows count as handled
                if opts.sort_by_length:
                    rows.sort(key=lambda r: (-len(r.prompt_ids), r.row_id))
                for b in range(0, len(rows), batch_size):
                    batch = rows[b: b + batch_size]
                    t_batch = time.perf_counter()
                    outs = engine.generate([r.prompt_ids for r in batch])
                    seconds = time.perf_counter() - t_batch
                    lines = [json.dumps(prediction_record(r, tokenizer, g, seconds, len(batch)), ensure_ascii=False)
                             for r, g in zip(batch, outs)]
                    # One write per batch, then flush + fsync: after a crash the file holds whole
                    # batches plus at most one torn line, which the next run cuts off.
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    summary["generated"] += len(batch)
                    progress.advance(task, len(batch))
                    if pause:
                        time.sleep(pause)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        summary["skipped"] = builder.skipped
    rate = summary["generated"] / summary["seconds"] if summary["seconds"] else float("nan")
    console.print(f"[green]done[/] {summary['generated']} rows in {summary['seconds']:.1f}s ({rate:.2f} rows/s); "
                  f"{len(builder.skipped)} bad rows skipped. Score with:\n"
                  f"  kitrec-fast eval score --predictions {pred_path} --output {out_dir / 'score'}")
    _report_skipped(console, builder.skipped)
    return summary


def _report_skipped(console, skipped: list[dict]) -> None:
    for s in skipped:
        console.print(f"[yellow]skipped[/] row {s['row_id']} (user_id={s['user_id']!r}): {s['problem']}")


def prediction_record(row: EvalRow, tokenizer: Any, gen: Generated, seconds: float, batch_size: int) -> dict:
    """One predictions line (the contract in kitrec_fast.eval.score, plus a few diagnostics)."""
    return {
        "row_id": row.row_id,
        "user_id": row.user_id,
        "user_type": row.user_type,
        "gt_item_id": row.gt_item_id,
        "gt_rating": row.gt_rating,
        "candidate_ids": row.candidate_ids,
        # Special tokens kept: <think> is an added token, and anything odd the model emits should
        # stay visible to the parser and to a human reading the file.
        "raw_text": tokenizer.decode(gen.token_ids, skip_special_tokens=False),
        "gen_seconds": round(seconds, 4),
        "new_tokens": gen.new_tokens,
        "finished": gen.finished,
        "prompt_tokens": len(row.prompt_ids),
        "batch_size": batch_size,
    }
