"""``kitrec-fast eval generate``: greedy generations for a test set, resumable, one JSONL line per row.

Usage::

    kitrec-fast eval generate --run RUN_DIR --dataset Younggooo/kitrec-test-seta --output OUT
    kitrec-fast eval generate --model Qwen/Qwen3-14B --adapter RUN_DIR/adapter --dataset D --output OUT
    kitrec-fast eval score --predictions OUT/predictions.jsonl --output OUT/score

Prompts: the row's prompt (``input`` for val/test rows, see ``kitrec_fast.data.schema``) rendered by
the training code (``render_generation_prompt``: Qwen3 chat template + ``<|im_start|>assistant\\n``).

Candidate truncation: test prompts list 100 candidates, training prompts ``data.max_candidates``
(50). ``--max-candidates K`` (default: the run's ``data.max_candidates``; without ``--run``: keep
all; ``0``: keep all) cuts each prompt with the training truncation (``truncate_prompt``: the
ground truth always kept, negatives chosen by the same per-row digest with the run's
``data.split_seed``, header count rewritten), so the model sees prompts shaped like its training
prompts. Metrics are then over K candidates, not 100: not comparable with 100-candidate numbers.
``--max-prompt-tokens N`` additionally cuts history (oldest first) and then candidates (down to
``data.min_candidates``) until the generation prompt fits N tokens. ``candidate_ids`` in the
output are the candidates of the prompt the model actually saw.

Decoding: greedy, up to ``--max-new-tokens`` (2,048) new tokens, stopping at ``<|im_end|>`` (and
``<|endoftext|>``, which is also the pad token and never trained as output). Batches of
``--batch-size`` rows are left padded with ``<|endoftext|>``. Rows are processed in windows of
pending rows sorted by prompt length (longest first) so batches carry little padding and an
out-of-memory error shows up in the first minutes, not hours in.

Output directory::

    OUT/predictions.jsonl    one line per row (the contract in kitrec_fast.eval.score), plus
                             ``finished`` (stopped at <|im_end|>), ``prompt_tokens``, ``batch_size``
    OUT/generate_config.json what produced it: model, adapter, dataset, decoding, truncation
    OUT/.generate.lock       held (flock) while a process writes, so two writers cannot interleave

Resume: each batch is written, flushed and fsync'ed before the next starts. A rerun reads the
row ids already present (a torn last line from a kill mid-write is cut off the file), skips them
and appends the rest, so every row appears exactly once. ``row_id`` is the row's index in the
loaded split, so it does not depend on ``--limit``/``--user-type``: a rerun with a larger
``--limit`` extends the file. A rerun whose model, adapter, dataset, decoding or truncation
differ from ``generate_config.json`` is refused (mixing them in one file would be meaningless).
``gen_seconds`` is the wall time of the row's batch (its latency, not its share of throughput).

Engines: ``--engine hf`` (default) runs ``model.generate`` on the training backend's model
(``load_for_inference``: Unsloth's fast inference mode on the fast path). ``--engine vllm`` runs
vLLM with the adapter as a LoRA request, when vLLM is installed.

Testing hook: ``KITREC_FAST_GENERATE_PAUSE_S=x`` sleeps x seconds after each written batch, so an
interruption test has a deterministic window in which the file is partly written.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

PREDICTIONS_FILE = "predictions.jsonl"
CONFIG_FILE = "generate_config.json"
LOCK_FILE = ".generate.lock"
PAUSE_ENV = "KITREC_FAST_GENERATE_PAUSE_S"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
# Pending rows tokenized/truncated at a time: bounds memory (30,000 test prompts of ~20k characters
# would be ~600 MB of strings) while giving length-sorting enough rows to form tight batches.
WINDOW_BATCHES = 32
# Settings that change what a row's generation is; a rerun into the same directory must match them.
FINGERPRINT_KEYS = ("model", "adapter", "backend", "engine", "dataset", "split", "max_new_tokens",
                    "max_candidates", "max_prompt_tokens", "candidate_seed", "tokenizer")


class UserError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


@dataclass
class GenerateOptions:
    dataset: str
    output: Path
    run_dir: Optional[Path] = None
    model: Optional[str] = None
    adapter: Optional[str] = None
    backend: Optional[str] = None
    engine: str = "hf"
    split: str = "test"
    limit: Optional[int] = None
    user_types: list[str] = field(default_factory=list)
    max_new_tokens: int = 2048
    batch_size: Optional[int] = None  # None: 4 on the hf engine, 64 on vLLM
    max_candidates: Optional[int] = None  # None: the run's data.max_candidates; 0: keep all
    max_prompt_tokens: Optional[int] = None
    tokenizer: Optional[str] = None
    on_bad_row: str = "error"
    sort_by_length: bool = True


@dataclass
class EvalRow:
    """One pending row, ready for generation."""

    row_id: int
    user_id: str
    user_type: str
    gt_item_id: str
    gt_rating: Optional[float]
    candidate_ids: list[str]
    prompt_ids: list[int]


@dataclass
class Generated:
    token_ids: list[int]  # new tokens, the stop token excluded
    finished: bool  # stopped on a stop token (False: hit max_new_tokens)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids) + int(self.finished)


# -- configuration -----------------------------------------------------------------------------

def resolve_config(opts: GenerateOptions):
    """``(RunConfig, adapter_dir or None)`` from ``--run`` and/or ``--model``/``--adapter``/``--backend``."""
    import dataclasses

    from kitrec_fast.config import ModelConfig, RunConfig

    if opts.run_dir is not None:
        from kitrec_fast.artifacts import rundir

        run_dir = Path(opts.run_dir)
        if not (run_dir / rundir.RESOLVED_CONFIG).is_file():
            raise UserError(f"--run: {run_dir} has no {rundir.RESOLVED_CONFIG} (is it a kitrec_fast run directory?)")
        cfg = rundir.read_resolved_config(run_dir)
        adapter = opts.adapter or str(run_dir / rundir.ADAPTER_DIR)
    elif opts.model is not None:
        cfg = RunConfig(model=ModelConfig(name=opts.model))
        adapter = opts.adapter
    else:
        raise UserError("give --run RUN_DIR, or --model M (with --adapter A for a trained adapter)")
    if opts.model is not None and opts.run_dir is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=opts.model))
    if opts.backend is not None and opts.backend != cfg.backend:
        weights = "exact" if opts.backend == "peft" else cfg.model.weights
        cfg = dataclasses.replace(cfg, backend=opts.backend, model=dataclasses.replace(cfg.model, weights=weights))
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"--adapter: {adapter} has no adapter_config.json (did training finish? "
                        "a run that was interrupted has checkpoints but no adapter/ yet)")
    return cfg, adapter


def effective_max_candidates(opts: GenerateOptions, cfg) -> int:
    """0 means keep every candidate."""
    if opts.max_candidates is not None:
        return opts.max_candidates
    return cfg.data.max_candidates if opts.run_dir is not None else 0


# -- resume ------------------------------------------------------------------------------------

def read_done(path: Path) -> set[int]:
    """Row ids already in ``path``; a torn last line (killed mid-write) is cut off the file.

    Only the last line may be torn: writes are appended and fsync'ed batch by batch, so damage
    anywhere else means the file was edited or two writers interleaved, and is an error.
    """
    if not path.is_file():
        return set()
    data = path.read_bytes()
    done: set[int] = set()
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if line.strip():
            try:
                record = json.loads(line)
                row_id = int(record["row_id"])
            except (ValueError, KeyError, TypeError):
                # The last piece: either no newline yet (torn) or the final line is unreadable.
                torn_tail = last or (i == len(lines) - 2 and not lines[-1].strip())
                if not torn_tail:
                    raise UserError(f"{path}: line {i + 1} is not a prediction record; the file is damaged "
                                    "(remove the bad line or use a new --output)") from None
                _truncate(path, offset)
                return done
            if last:
                # Valid JSON but no newline: the writer died before finishing the line. Keep the
                # record and complete the line so appends start on a fresh line.
                with open(path, "ab") as fh:
                    fh.write(b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            if row_id in done:
                raise UserError(f"{path}: row_id {row_id} appears twice (two writers?); use a new --output")
            done.add(row_id)
        offset += len(line) + 1
    return done


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive flock on the output directory; the kernel drops it when the process dies."""
    import fcntl

    fh = open(out_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--output: another `eval generate` is writing to {out_dir}") from None
        yield
    finally:
        fh.close()


def check_fingerprint(out_dir: Path, fingerprint: dict) -> None:
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("fingerprint", {})
    except ValueError:
        return  # a config torn by a kill; it is rewritten below
    diff = {k: (old.get(k), fingerprint.get(k)) for k in FINGERPRINT_KEYS if old.get(k) != fingerprint.get(k)}
    if diff and (out_dir / PREDICTIONS_FILE).is_file():
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise UserError(f"--output {out_dir} holds generations made with other settings ({lines}); "
                        "use a new --output directory")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# -- rows --------------------------------------------------------------------------------------

def select_rows(raw: Sequence[dict], user_types: Sequence[str], limit: Optional[int]) -> list[int]:
    """Indices of the rows to evaluate: user-type filter first, then the first ``limit``."""
    wanted = set(user_types)
    idx = [i for i, r in enumerate(raw)
           if not wanted or (isinstance(r, dict) and str(r.get("user_type") or "").strip() in wanted)]
    return idx[:limit] if limit is not None else idx


class RowBuilder:
    """Normalise, truncate and tokenize rows exactly as the training code does."""

    def __init__(self, tokenizer: Any, cfg, max_candidates: int, max_prompt_tokens: Optional[int],
                 on_bad_row: str):
        from kitrec_fast.render.chat import get_renderer

        self.tokenizer = tokenizer
        self.renderer = get_renderer(tokenizer)
        self.cfg = cfg
        self.max_candidates = max_candidates
        self.max_prompt_tokens = max_prompt_tokens
        self.on_bad_row = on_bad_row
        self.skipped: list[dict] = []

    def _options(self, n_candidates: int):
        from kitrec_fast.truncate.truncate import TruncateOptions

        k = self.max_candidates or n_candidates
        return TruncateOptions(
            # No token budget unless asked for: the candidate cut alone is what makes test prompts
            # look like training prompts; history is only cut to fit --max-prompt-tokens.
            max_length=self.max_prompt_tokens or sys.maxsize,
            max_candidates=k,
            min_candidates=min(self.cfg.data.min_candidates, k),
            history_recent=self.cfg.data.history_recent,
            seed=self.cfg.data.split_seed,
        )

    def build(self, indices: Sequence[int], raws: Sequence[dict]) -> list[EvalRow]:
        """Rows ready for generation (bad rows raise or, under ``skip``, are recorded and left out)."""
        from kitrec_fast.data.schema import BadRowError, normalize_row
        from kitrec_fast.render.chat import render_generation_prompt
        from kitrec_fast.truncate.truncate import truncate_prompt

        normalized = []
        for index, raw in zip(indices, raws):
            try:
                normalized.append(normalize_row(raw, index, require_target=False))
            except BadRowError as exc:
                self._bad(exc)
        r = self.renderer
        # One batched tokenizer call for every distinct text chunk of the window (cached after).
        r.warm(r.generation_text(row.prompt) for row in normalized)
        out = []
        for row in normalized:
            prompt, parsed = row.prompt, row.parsed
            n_cands = len(parsed.candidate_ids)
            if (self.max_candidates and n_cands > self.max_candidates) or self.max_prompt_tokens:
                try:
                    tr = truncate_prompt(parsed, gt_item_id=row.gt_item_id, user_id=row.user_id,
                                         measure=lambda p: r.count(r.generation_text(p)),
                                         line_costs=r.line_costs, options=self._options(n_cands),
                                         index=row.index)
                except BadRowError as exc:
                    self._bad(exc)
                    continue
                prompt, parsed = tr.prompt, tr.parsed
            out.append(EvalRow(row_id=row.index, user_id=row.user_id, user_type=row.user_type,
                               gt_item_id=row.gt_item_id, gt_rating=row.gt_rating,
                               candidate_ids=list(parsed.candidate_ids),
                               prompt_ids=render_generation_prompt(self.tokenizer, prompt)))
        return out

    def _bad(self, exc) -> None:
        if self.on_bad_row == "error":
            raise UserError(str(exc)) from None
        self.skipped.append({"row_id": exc.index, "user_id": exc.user_id, "problem": exc.problem})


# -- engines -----------------------------------------------------------------------------------

class HFEngine:
    """``model.generate`` on the training backend's model (Unsloth inference mode on the fast path)."""

    name = "hf"

    def __init__(self, backend_module, cfg, adapter: Optional[str], stop_ids: list[int], pad_id: int,
                 max_new_tokens: int, max_seq_length: int):
        self.model = backend_module.load_for_inference(cfg, adapter, max_seq_length=max_seq_length)
        self.stop_ids = stop_ids
        self.pad_id = pad_id
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: list[list[int]]) -> list[Generated]:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            # Left padding: every row's last prompt token sits at the same position, so the first
            # generated token of every row comes from the same step.
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,  # greedy; override the model's
                eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True)
        return [cut_at_stop(row, self.stop_ids) for row in out[:, width:].tolist()]


class VLLMEngine:
    """vLLM with the adapter as a LoRA request (optional dependency)."""

    name = "vllm"
    _LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM accepts for max_lora_rank

    def __init__(self, cfg, model_path: str, tokenizer_path: str, adapter: Optional[str], stop_ids: list[int],
                 max_new_tokens: int):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise UserError(f"--engine vllm needs vLLM, which is not importable here ({exc}); install it "
                            "(pip install vllm, on a CUDA machine) or use --engine hf") from None
        kwargs: dict[str, Any] = {"model": model_path, "tokenizer": tokenizer_path, "seed": cfg.train.seed,
                                  "enable_lora": adapter is not None}
        if adapter is not None:
            kwargs["max_lora_rank"] = next((r for r in self._LORA_RANKS if r >= cfg.lora.r), cfg.lora.r)
        if cfg.model.load_in_4bit:
            kwargs["quantization"] = "bitsandbytes"  # the same nf4 base the adapter was trained on
        self.llm = LLM(**kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                     skip_special_tokens=False)
        self.lora = LoRARequest("kitrec", 1, adapter) if adapter is not None else None
        self.stop_ids = stop_ids

    def generate(self, prompts: list[list[int]]) -> list[Generated]:
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], self.params,
                                 lora_request=self.lora, use_tqdm=False)
        results = []
        for o in outs:
            g = cut_at_stop(list(o.outputs[0].token_ids), self.stop_ids)
            results.append(Generated(g.token_ids, g.finished or o.outputs[0].finish_reason == "stop"))
        return results


def cut_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> Generated:
    """New tokens up to the first stop token (whatever follows it is padding)."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return Generated(tokens[:i], True)
    return Generated(tokens, False)


# -- progress ----------------------------------------------------------------------------------

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


# -- the command -------------------------------------------------------------------------------

def run_generate(opts: GenerateOptions, console=None, command: str = "") -> dict:
    """Generate for every selected row not yet in ``OUT/predictions.jsonl``; returns a summary."""
    from kitrec_fast.console import make_console

    console = console or make_console()
    if opts.engine not in ("hf", "vllm"):
        raise UserError(f"--engine: must be hf or vllm, got {opts.engine!r}")
    if opts.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: must be >= 1, got {opts.max_new_tokens}")
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit: must be >= 1, got {opts.limit}")
    batch_size = opts.batch_size or (64 if opts.engine == "vllm" else 4)
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    cfg, adapter = resolve_config(opts)
    max_candidates = effective_max_candidates(opts, cfg)
    if max_candidates < 0:
        raise UserError(f"--max-candidates: must be >= 0 (0 keeps all), got {max_candidates}")

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
        "max_candidates": max_candidates, "max_prompt_tokens": opts.max_prompt_tokens,
        "candidate_seed": cfg.data.split_seed if (max_candidates or opts.max_prompt_tokens) else None,
        "tokenizer": opts.tokenizer or cfg.data.tokenizer or cfg.model.name,
    }

    with output_lock(out_dir):
        check_fingerprint(out_dir, fingerprint)
        done = read_done(pred_path)
        try:
            raw = load_raw(opts.dataset, opts.split)
        except DatasetLoadError as exc:
            raise UserError(str(exc)) from None
        selected = select_rows(raw, opts.user_types, opts.limit)
        pending = [i for i in selected if i not in done]
        already = len(selected) - len(pending)
        _write_json_atomic(out_dir / CONFIG_FILE, {
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
        })
        console.print(f"[green]rows[/] {len(selected)} selected from {opts.dataset} ({opts.split}, {len(raw)} rows); "
                      f"{already} already in {pred_path}, {len(pending)} to generate")
        summary = {"output": str(pred_path), "selected": len(selected), "already_done": already,
                   "generated": 0, "skipped": [], "seconds": 0.0}
        if not pending:
            return summary

        tokenizer = load_tokenizer(tokenizer_name)
        vocab = tokenizer.get_vocab()
        if IM_END not in vocab:
            raise UserError(f"tokenizer {tokenizer_name} has no {IM_END}; KitREC models are Qwen3 chat models")
        stop_ids = [vocab[IM_END]] + ([vocab[END_OF_TEXT]] if END_OF_TEXT in vocab else [])
        pad_id = tokenizer.pad_token_id
        builder = RowBuilder(tokenizer, cfg, max_candidates, opts.max_prompt_tokens, opts.on_bad_row)
        # Unsloth sizes RoPE/cache buffers from max_seq_length; untruncated 100-candidate prompts run
        # past the training length, so leave room (transformers ignores it).
        prompt_budget = opts.max_prompt_tokens or max(2 * cfg.data.max_length, 8192)

        t_load = time.perf_counter()
        if opts.engine == "hf":
            engine: Any = HFEngine(backend_module, cfg, adapter, stop_ids, pad_id, opts.max_new_tokens,
                                   max_seq_length=prompt_budget + opts.max_new_tokens)
        else:
            engine = VLLMEngine(cfg, resolve_model_path(cfg.model.name), tokenizer_name, adapter, stop_ids,
                                opts.max_new_tokens)
        console.print(f"[green]model[/] {cfg.model.name} + {adapter or 'no adapter'} "
                      f"({opts.engine}{'/' + cfg.backend if opts.engine == 'hf' else ''}) "
                      f"loaded in {time.perf_counter() - t_load:.1f}s")

        pause = float(os.environ.get(PAUSE_ENV) or 0)
        t0 = time.perf_counter()
        window = batch_size * WINDOW_BATCHES
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
    for s in builder.skipped:
        console.print(f"[yellow]skipped[/] row {s['row_id']} (user_id={s['user_id']!r}): {s['problem']}")
    return summary


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


def add_generate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="greedy generations for a test set (resumable JSONL)",
                       description="Greedy generations, one JSONL line per row, resumable. See "
                                   "kitrec_fast/eval/generate.py for truncation and resume details.")
    src = p.add_argument_group("model")
    src.add_argument("--run", dest="run_dir", type=Path, help="run directory (resolved_config.yaml + adapter/)")
    src.add_argument("--model", help="base model (Hub id, directory, testkit:tiny-qwen3); overrides the run's")
    src.add_argument("--adapter", help="adapter directory (default with --run: RUN_DIR/adapter; without: none)")
    src.add_argument("--backend", choices=["unsloth", "peft"], help="model backend (default: the run's, else unsloth)")
    src.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="hf: backend model.generate; vllm: vLLM")
    src.add_argument("--tokenizer", help="tokenizer (default: the run's data.tokenizer, else the model's)")
    data = p.add_argument_group("rows")
    data.add_argument("--dataset", required=True, help="Hub id, local .jsonl/.json/.parquet, or embedded:NAME")
    data.add_argument("--split", default="test", help="dataset split (default test)")
    data.add_argument("--limit", type=int, help="only the first N selected rows")
    data.add_argument("--user-type", dest="user_types", action="extend", nargs="+", default=[], metavar="T",
                      help="only rows of these user types (repeatable)")
    data.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                      help="a row failing validation: stop (default) or skip it and report it")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=2048, help="default 2048")
    gen.add_argument("--batch-size", type=int, help="rows per generate call (default 4; vLLM: 64)")
    gen.add_argument("--max-candidates", type=int,
                     help="cut candidates as in training, ground truth kept (default: the run's "
                          "data.max_candidates; without --run, or 0: keep all)")
    gen.add_argument("--max-prompt-tokens", type=int, help="also cut history/candidates to fit N prompt tokens")
    gen.add_argument("--no-sort", dest="sort_by_length", action="store_false",
                     help="keep dataset order instead of batching by prompt length")
    p.add_argument("--output", required=True, type=Path, help="output directory (predictions.jsonl goes here)")
    p.set_defaults(func=_generate_command)
    return p


def _generate_command(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    console = make_console()
    opts = GenerateOptions(**{f: getattr(args, f) for f in GenerateOptions.__dataclass_fields__ if hasattr(args, f)})
    command = " ".join(["kitrec-fast"] + [shlex.quote(a) for a in sys.argv[1:]])
    try:
        run_generate(opts, console, command)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


__all__ = ["GenerateOptions", "Generated", "EvalRow", "UserError", "add_generate_parser", "cut_at_stop",
           "read_done", "run_generate", "select_rows", "prediction_record"]
