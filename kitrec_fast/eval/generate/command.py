"""``eval generate``: the command itself (see the package docstring for behaviour and files)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kitrec_fast.eval.generate.engines import Generated, HFEngine, VLLMEngine, choose_engine
from kitrec_fast.eval.generate.options import (CONFIG_FILE, PREDICTIONS_FILE, GenerateError, GenerateOptions,
                                               resolve_config)
from kitrec_fast.eval.generate.resume import check_fingerprint, output_lock, read_done
from kitrec_fast.eval.generate.trained_base import (choose_base, describe_choice, resolve_base, served_config,
                                                    trained_base, trained_key)
from kitrec_fast.eval.generate.rows import EvalRow, PromptStore, RowBuilder, iter_selected
from kitrec_fast.fsio import atomic_write_json, check_writable
from kitrec_fast.grid.worker import _die_with_parent

PAUSE_ENV = "KITREC_FAST_GENERATE_PAUSE_S"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
# Pending rows built at a time: the chunk-token cache and the raw rows in flight are bounded by a
# window (30,000 test prompts of ~20k characters would be ~600 MB of strings), and one batched
# tokenizer call per window keeps the Rust tokenizer busy.
WINDOW_BATCHES = 32
WINDOW_MIN_ROWS = 512


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        """The final line's rows/s as it stands (``rows_per_second``), not rich's own speed, which
        counts from the first batch's end and so leaves that batch's time out."""

        def render(self, task) -> Text:
            rate = task.fields.get("rows_per_second")
            return Text("-- rows/s" if rate is None else f"{rate:.2f} rows/s", style="progress.data.speed")

    return Progress(TextColumn("[bold]generate[/]"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    speed_estimate_period=600.0)


@dataclass
class _Plan:
    """One run's share of a command: its output directory, its record, and its built pending rows."""

    opts: GenerateOptions
    cfg: Any
    adapter: Optional[str]
    lora_name: str
    out_dir: Path
    config: dict
    summary: dict
    tokenizer: Any = None
    stop_ids: list[int] = field(default_factory=list)
    store: Optional[PromptStore] = None
    builder: Optional[RowBuilder] = None

    @property
    def pred_path(self) -> Path:
        return self.out_dir / PREDICTIONS_FILE


def run_generate(opts: GenerateOptions, console=None, command: str = "") -> dict:
    """Generate for every selected row not yet in ``OUT/predictions.jsonl``; returns a summary.

    With several runs: one summary per run name under ``"runs"``.
    """
    from kitrec_fast.console import make_console

    check_writable(opts.output, "--output")
    console = console or make_console()
    engine, why = choose_engine(opts.engine)
    if opts.engine == "auto":
        console.print(f"[green]engine[/] auto -> {engine} ({why})")
    opts = dataclasses.replace(opts, engine=engine)
    if opts.runs and engine == "hf":
        # each run's process reads its own model.eval_base: runs that disagree stop here, before the first starts
        _choose_base(opts, [(single, *resolve_config(single)) for single in opts.single_runs()])
        return _one_after_another(opts, console)
    return _generate(opts, console, command)


def _choose_base(opts: GenerateOptions, resolved: list) -> tuple[str, str]:
    """``(base, source)`` for the runs of ``resolved`` (``(options, cfg, adapter)`` each)."""
    runs = [(single.run_dir.name, cfg) for single, cfg, _ in resolved if single.run_dir is not None]
    return choose_base(opts.base, runs, opts.engine)


def _one_after_another(opts: GenerateOptions, console) -> dict:
    """hf with several runs: each run in its own process, exactly as if evaluated alone (the unsloth
    and peft backends never share a process, and each model's memory is returned in between)."""
    summaries: dict[str, dict] = {}
    failed = []
    for single in opts.single_runs():
        name = single.run_dir.name
        console.print(f"[green]run[/] {name} -> {single.output}")
        # The child dies with this process (a grid worker killed mid-run must not leave a writer behind).
        proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "eval", "generate", *single.argv()],
                              preexec_fn=_die_with_parent)
        summaries[name] = {"output": str(single.output / PREDICTIONS_FILE), "exit_status": proc.returncode}
        if proc.returncode != 0:
            failed.append(f"{name} (exit status {proc.returncode})")
    if failed:
        raise GenerateError(f"generation failed for {', '.join(failed)}; rerun the same command to resume")
    return {"runs": summaries}


def adapter_rank(adapter: str) -> int:
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def _base_record(cfg) -> str:
    m = cfg.model
    return f"{m.quant_type} 4-bit ({m.weights})" if m.load_in_4bit else f"unquantized ({m.compute_dtype} compute)"


def _generate(opts: GenerateOptions, console, command: str) -> dict:
    resolved = [(single, *resolve_config(single)) for single in opts.single_runs()]
    if len({cfg.model.name for _, cfg, _ in resolved}) > 1:
        bases = ", ".join(f"{s.run_dir.name}: {cfg.model.name}" for s, cfg, _ in resolved)
        raise GenerateError(f"--run: one engine serves one base model; these runs have different bases ({bases}). "
                            "Evaluate each base in its own command")
    base, base_from = _choose_base(opts, resolved)
    opts = dataclasses.replace(opts, base=base)
    resolved = [(dataclasses.replace(single, base=base), cfg, adapter) for single, cfg, adapter in resolved]
    if opts.engine == "vllm":
        from kitrec_fast.backends.common import MODEL_OPTION, resolve_model_path
        from kitrec_fast.eval.generate.vllm_check import check_vllm_can_serve
        from kitrec_fast.hub import require_hub

        name = resolved[0][1].model.name
        require_hub(name, "model", MODEL_OPTION)  # the base's config is read next: one line, not a traceback
        # before prompts are built and the engine starts (minutes of work)
        check_vllm_can_serve(resolve_model_path(name), name, base)
    from kitrec_fast.data.load import DatasetLoadError, check_dataset

    try:
        check_dataset(opts.dataset)  # a missing file or an unreachable Hub: before the backend and any output
    except DatasetLoadError as exc:
        raise GenerateError(str(exc)) from None
    console.print(f"[green]base[/] {describe_choice(base, base_from)}")
    # The backend module before anything imports transformers: unsloth must patch it first.
    backend_module = None
    if opts.engine == "hf" and not opts.prepare_only:
        from kitrec_fast.backends import get_backend

        backend_module = get_backend(resolved[0][1].backend)

    with ExitStack() as stack:
        plans = []
        for single, cfg, adapter in resolved:
            stack.enter_context(output_lock(_out_dir(single)))
            plan = _prepare(single, cfg, adapter, command, console, base_from)
            if plan.store is not None:
                stack.callback(plan.store.close)
            plans.append(plan)
        todo = [p for p in plans if p.store is not None and len(p.store)]
        if todo and not opts.prepare_only:
            engine = _start_engine(opts, todo, backend_module, console)
            for plan in todo:
                _generate_rows(plan, engine, console)
    for plan in plans:
        _report_done(plan, console)
    if opts.runs:
        return {"runs": {p.opts.run_dir.name: p.summary for p in plans}}
    return plans[0].summary


def _out_dir(opts: GenerateOptions) -> Path:
    opts.output.mkdir(parents=True, exist_ok=True)
    return opts.output


def _prepare(opts: GenerateOptions, cfg, adapter: Optional[str], command: str, console, base_from: str) -> _Plan:
    """Check the output directory and build every pending row once (into a PromptStore).

    ``opts.base`` is the chosen base (``_choose_base``), ``base_from`` where the choice came from."""
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.load import DatasetLoadError, iter_raw
    from kitrec_fast.render.tokenizer import load_tokenizer

    out_dir = opts.output
    max_candidates = opts.max_candidates  # None: every candidate of the prompt
    fingerprint = {
        "model": cfg.model.name, "adapter": str(Path(adapter).resolve()) if adapter else None,
        "backend": cfg.backend if opts.engine == "hf" else None, "engine": opts.engine,
        "dataset": opts.dataset, "split": opts.split, "max_new_tokens": opts.max_new_tokens,
        "max_candidates": max_candidates or "all", "max_prompt_tokens": opts.max_prompt_tokens,
        "candidate_seed": cfg.data.split_seed if (max_candidates or opts.max_prompt_tokens) else None,
        "tokenizer": opts.tokenizer or cfg.data.tokenizer or cfg.model.name,
        # None: the engine's own base (what outputs made before --base existed used)
        "base": None if resolve_base(opts.base, opts.engine) == resolve_base("auto", opts.engine)
        else resolve_base(opts.base, opts.engine),
    }
    check_fingerprint(out_dir, fingerprint)
    pred_path = out_dir / PREDICTIONS_FILE
    done = read_done(pred_path, notice=lambda line: console.print(f"[yellow]predictions[/] {line}"))
    try:
        raw, loaded = iter_raw(opts.dataset, opts.split)
    except DatasetLoadError as exc:
        raise GenerateError(str(exc)) from None
    batch_size = opts.effective_batch_size
    plan = _Plan(opts=opts, cfg=cfg, adapter=adapter, lora_name=opts.run_dir.name if opts.run_dir else "adapter",
                 out_dir=out_dir, config={}, summary={"output": str(pred_path), "selected": 0, "already_done": 0,
                                                      "generated": 0, "skipped": [], "seconds": 0.0,
                                                      "build_seconds": 0.0})
    window = max(batch_size * WINDOW_BATCHES, WINDOW_MIN_ROWS)
    selected, pending, buffer = 0, 0, []
    t0 = time.perf_counter()

    def flush() -> None:
        if plan.builder is None:  # the tokenizer only when there is something to build
            name = opts.tokenizer or cfg.data.tokenizer or resolve_model_path(cfg.model.name)
            plan.tokenizer = load_tokenizer(name, "--tokenizer" if opts.tokenizer else "the run's data.tokenizer"
                                            if cfg.data.tokenizer else "the run's model.name")
            vocab = plan.tokenizer.get_vocab()
            if IM_END not in vocab:
                raise GenerateError(f"tokenizer {name} has no {IM_END}; KitREC models are Qwen3 chat models")
            plan.stop_ids = [vocab[IM_END]] + ([vocab[END_OF_TEXT]] if END_OF_TEXT in vocab else [])
            plan.builder = RowBuilder(plan.tokenizer, cfg, max_candidates, opts.max_prompt_tokens, opts.on_bad_row)
            plan.store = PromptStore(out_dir)
        t_build = time.perf_counter()
        plan.store.add(plan.builder.build([i for i, _ in buffer], [r for _, r in buffer]))
        plan.builder.renderer.clear()  # chunk ids of this window: not needed again, ~250 MB per 12k rows
        buffer.clear()
        plan.summary["build_seconds"] += time.perf_counter() - t_build

    # One streaming pass: select, skip rows already written, build the rest window by window. The
    # longest prompt sizes the engine; bad rows stop here, before minutes of model loading.
    for index, row in iter_selected(raw, opts.user_types, opts.limit, opts.limit_per_type):
        selected += 1
        if index in done:
            continue
        pending += 1
        buffer.append((index, row))
        if len(buffer) >= window:
            flush()
    if buffer:
        flush()
    if not selected:  # before anything is written: an empty selection leaves the folder as it was
        wanted = f" with user type {', '.join(opts.user_types)}" if opts.user_types else ""
        raise GenerateError(f"no row of {opts.dataset} ({opts.split}, {loaded} rows){wanted} to generate for")
    already = selected - pending
    longest = plan.store.longest if plan.store is not None else 0
    plan.summary.update(selected=selected, already_done=already, prepare_seconds=round(time.perf_counter() - t0, 2),
                        build_seconds=round(plan.summary["build_seconds"], 2),
                        prompts=len(plan.store or ()), prompt_tokens=plan.store.tokens if plan.store else 0)
    plan.config = {
        "fingerprint": fingerprint, "command": command, "run_dir": str(opts.run_dir) if opts.run_dir else None,
        "batch_size": batch_size, "limit": opts.limit, "limit_per_type": opts.limit_per_type, "user_types": opts.user_types,
        "decoding": {"greedy": True, "stop_tokens": [IM_END, END_OF_TEXT], "pad_token": END_OF_TEXT,
                     "padding_side": "left"},
        "truncation": {"max_candidates": max_candidates or "all", "max_prompt_tokens": opts.max_prompt_tokens,
                       "min_candidates": cfg.data.min_candidates, "history_recent": cfg.data.history_recent,
                       "seed": cfg.data.split_seed},
        "rows": {"loaded": loaded, "selected": selected, "already_done": already, "pending": pending},
        "base": {"served": opts.base, "from": base_from},
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if pending:
        plan.config["prompts"] = {"longest_tokens": longest, "max_seq_length": longest + opts.max_new_tokens}
    if not pending or opts.prepare_only:
        # Otherwise written once the engine stands: a missing engine leaves no record of a generation.
        atomic_write_json(out_dir / CONFIG_FILE, plan.config)
    console.print(f"[green]rows[/] {selected} selected from {opts.dataset} ({opts.split}, {loaded} rows); "
                  f"{already} already in {pred_path}, {pending} to generate")
    if longest:
        console.print(f"[green]prompts[/] longest {longest} tokens; candidates: "
                      f"{'all' if not max_candidates else f'cut to {max_candidates}'}")
    return plan


def _start_engine(opts: GenerateOptions, plans: list[_Plan], backend_module, console):
    """One engine for every plan, sized for the longest prompt among them plus the new tokens."""
    from kitrec_fast.backends.common import resolve_dtype, resolve_model_path

    first = plans[0]
    max_seq_length = max(p.store.longest for p in plans) + opts.max_new_tokens
    if any(p.stop_ids != first.stop_ids for p in plans):
        raise GenerateError("--run: the runs' tokenizers have different stop tokens; evaluate them separately")
    base = resolve_base(opts.base, opts.engine)
    base_record = {"served": base, "model": first.cfg.model.name, "revision": first.cfg.model.revision}
    t_load = time.perf_counter()
    if opts.engine == "hf":
        served = served_config(first.cfg, base)
        engine: Any = HFEngine(backend_module, served, first.adapter, first.stop_ids,
                               first.tokenizer.pad_token_id, opts.max_new_tokens, max_seq_length=max_seq_length)
        precision = _base_record(served) if served.model.load_in_4bit else str(
            resolve_dtype(served.model.compute_dtype)).replace("torch.", "")
        record = {"name": "hf", "backend": first.cfg.backend, "base_precision": precision}
    else:
        from kitrec_fast.eval.generate.vllm_check import check_context

        check_context(resolve_model_path(first.cfg.model.name), first.cfg.model.name,
                      max(p.store.longest for p in plans), opts.max_new_tokens)
        adapters = {p.lora_name: (p.adapter, adapter_rank(p.adapter)) for p in plans if p.adapter}
        model_path = resolve_model_path(first.cfg.model.name)
        if base == "trained":
            if len({trained_key(p.cfg) for p in plans}) > 1:
                raise GenerateError("--base trained: the runs loaded their base with different quantization "
                                    "settings, so they have different trained bases; evaluate them separately")
            model_path, built = trained_base(first.cfg, console)
            base_record.update(fingerprint=built["fingerprint"], made_from=built["made_from"])
        engine = VLLMEngine(model_path, adapters, first.stop_ids, opts.max_new_tokens,
                            max_model_len=max_seq_length, max_num_seqs=opts.effective_batch_size,
                            seed=first.cfg.train.seed)
        record = {"name": "vllm", "version": engine.version, "base_precision": f"{engine.precision} ("
                  + ("dequantized from the trained 4-bit weights)" if base == "trained" else "unquantized)"),
                  "settings": engine.settings, "adapters": len(adapters)}
    seconds = time.perf_counter() - t_load
    console.print(f"[green]model[/] {first.cfg.model.name} + "
                  f"{', '.join(p.adapter or 'no adapter' for p in plans)} "
                  f"({opts.engine}{'/' + first.cfg.backend if opts.engine == 'hf' else ' ' + record['version']}, "
                  f"base {record['base_precision']}) loaded in {seconds:.1f}s")
    for plan in plans:
        trained_on = _base_record(plan.cfg)
        plan.config["engine"] = {**record, "adapter_trained_on": trained_on, "load_seconds": round(seconds, 1)}
        plan.config["base"] = {**plan.config["base"], **base_record}
        atomic_write_json(plan.out_dir / CONFIG_FILE, plan.config)
        if opts.engine == "vllm" and plan.adapter and plan.cfg.model.load_in_4bit and base == "original":
            console.print(f"[yellow]note[/] {plan.lora_name}: adapter trained on a {trained_on} base, served on the "
                          f"{engine.precision} base (as the paper's evaluation did); predictions can differ "
                          "slightly from --engine hf, which loads the training quantization")
    return engine


def _generate_rows(plan: _Plan, engine, console) -> None:
    opts, store = plan.opts, plan.store
    batch_size = opts.effective_batch_size
    summary = plan.summary
    order = store.order(opts.sort_by_length)
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    t0 = time.perf_counter()
    skipped = len(plan.builder.skipped)
    with _progress(console) as progress, open(plan.pred_path, "a", encoding="utf-8") as fh:
        task = progress.add_task("generate", total=summary["selected"], completed=summary["already_done"] + skipped)
        for b in range(0, len(order), batch_size):
            batch = [store.get(i) for i in order[b: b + batch_size]]
            t_batch = time.perf_counter()
            outs = engine.generate([r.prompt_ids for r in batch], adapter=plan.lora_name if plan.adapter else None)
            seconds = time.perf_counter() - t_batch
            lines = [json.dumps(prediction_record(r, plan.tokenizer, g, seconds, len(batch)), ensure_ascii=False)
                     for r, g in zip(batch, outs)]
            # One write per batch, then flush + fsync: after a crash the file holds whole
            # batches plus at most one torn line, which the next run cuts off.
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            summary["generated"] += len(batch)
            summary["seconds"] = round(time.perf_counter() - t0, 2)  # to the last row written
            progress.update(task, advance=len(batch), rows_per_second=rows_per_second(summary))
            if pause:
                time.sleep(pause)


def rows_per_second(summary: dict) -> float:
    """The one rows/s the bar and the final line show: rows generated in this session over the
    seconds from the start of generation (model loading and prompt building not counted) to the
    last row written."""
    return summary["generated"] / summary["seconds"] if summary["seconds"] else float("nan")


def _report_done(plan: _Plan, console) -> None:
    summary = plan.summary
    skipped = plan.builder.skipped if plan.builder is not None else []
    summary["skipped"] = skipped
    if summary["generated"]:
        rate = rows_per_second(summary)
        console.print(f"[green]done[/] {summary['generated']} rows in {summary['seconds']:.1f}s ({rate:.2f} rows/s); "
                      f"{len(skipped)} bad rows skipped. Score with:\n"
                      f"  kitrec-fast eval score --predictions {plan.pred_path} --output {plan.out_dir / 'score'}")
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
