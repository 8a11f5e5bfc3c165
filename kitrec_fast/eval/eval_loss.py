"""``kitrec-fast eval loss``: loss and perplexity of a trained adapter on validation rows.

Usage::

    kitrec-fast eval loss --run RUN_DIR                          # the run's own held-out validation share
    kitrec-fast eval loss --run RUN_DIR --dataset D --split S    # every row of another set with targets

The loss is the likelihood of each row's target (``output``), so only rows that carry one can be
scored. The published val/test sets (``Younggooo/kitrec-val-seta``, ``-test-seta``) have an
empty ``output``: pointed at such a set, the command says so once and names what works (the
held-out split of a training set) instead of rejecting every row; rows without a target in a
mixed set are left out and counted.

Rows are prepared by the training pipeline (``kitrec_fast.data.pipeline.prepare`` with the run's
``DataConfig``): same validation, truncation (``data.max_length``, ``data.max_candidates``, the
run's candidate seed), chat rendering and masking (labels -100 on the prompt; the assistant turn
from ``<think>`` through ``<|im_end|>`` is scored). Which rows:

* ``--rows validation``: the stratified validation share of the dataset, computed with the run's
  ``data.val_fraction`` / ``data.split_seed`` (and ``data.limit``, which the split was made
  after) -- exactly the rows the trainer evaluated on when the dataset is the run's own. Only
  those rows are tokenized (the split is computed first and the validation rows alone go through
  ``prepare``), which is 10x less work than preparing the whole training set.
* ``--rows all``: every row of the dataset (a dedicated validation set such as
  ``Younggooo/kitrec-val-seta``, split ``val``).
* ``--rows auto`` (default): ``validation`` for the run's own dataset, ``all`` for another one.

Numbers, all per trained token over the whole set (not a mean of batch means), overall and per
``user_type``: ``loss`` is the label-smoothed cross-entropy with the run's
``train.label_smoothing`` (the objective the trainer logs as ``eval_loss``), ``nll`` the plain
cross-entropy and ``perplexity = exp(nll)``. Both come from ``causal_lm_loss`` on the decoder's
final hidden states, the code path training uses, so no ``[tokens, vocabulary]`` logits tensor
is built. The model is the 4-bit base plus the adapter in eval mode (no dropout, no NEFTune).

Output: ``--output`` (default ``RUN_DIR/eval_loss.json``) with the settings, the overall and
per-type numbers and one record per row; a rich table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from kitrec_fast.errors import UserError
from kitrec_fast.fsio import atomic_write_json

ROWS_MODES = ("auto", "validation", "all")


class EvalLossError(UserError):
    """A problem with the options or the rows of `eval loss`."""


def rows_with_target(raw: Sequence[dict], dataset: str, split: str) -> tuple[list[dict], list[int], int]:
    """``(rows that carry a target, their indices, how many had none)``; no target at all is an error.

    Rows broken in other ways are kept: preparation reports them with its usual message.
    """
    from kitrec_fast.data.schema import BadRowError, normalize_row

    keep, ids = [], []
    for i, r in enumerate(raw):
        try:
            has_target = bool(normalize_row(r, i, require_target=False).target.strip())
        except BadRowError:
            has_target = True
        if has_target:
            keep.append(r)
            ids.append(i)
    if raw and not keep:
        raise EvalLossError(
            f"none of the {len(raw)} rows of {dataset} ({split}) has a target ('output'): eval loss scores the "
            "model's likelihood of each row's target, and validation/test sets such as Younggooo/kitrec-val-seta "
            "carry none. Score the held-out split of a training set instead: `kitrec-fast eval loss --run RUN_DIR` "
            "(the run's own validation share), or --dataset TRAINING_SET --rows validation. For test sets, use "
            "`eval generate` + `eval score`.")
    return keep, ids, len(raw) - len(keep)


@dataclass
class RowLoss:
    row_id: int  # index in the loaded dataset (after the run's data.limit)
    user_id: str
    user_type: str
    tokens: int  # trained tokens
    loss_sum: float  # smoothed, summed over the trained tokens
    nll_sum: float


def aggregate(rows: Sequence[RowLoss]) -> dict[str, Any]:
    """Token-weighted loss / nll / perplexity of ``rows``."""
    tokens = sum(r.tokens for r in rows)
    loss = sum(r.loss_sum for r in rows) / tokens if tokens else float("nan")
    nll = sum(r.nll_sum for r in rows) / tokens if tokens else float("nan")
    perplexity = float("nan") if not tokens else (math.exp(nll) if nll < 700 else float("inf"))  # exp overflows
    return {"rows": len(rows), "tokens": tokens, "loss": loss, "nll": nll, "perplexity": perplexity}


def summarize(rows: Sequence[RowLoss]) -> dict[str, Any]:
    by_type: dict[str, list[RowLoss]] = defaultdict(list)
    for r in rows:
        by_type[r.user_type].append(r)
    return {"overall": aggregate(rows), "per_user_type": {t: aggregate(by_type[t]) for t in sorted(by_type)}}


def select_validation(cfg, dataset: str, split: str, rows_mode: str,
                      console=None) -> tuple[Any, list[dict], list[int], str]:
    """``(DataConfig for prepare, raw rows to prepare, their row ids, resolved mode)``.

    For ``validation`` the stratified split is computed here with the very function and inputs
    ``prepare`` uses (rows that pass ``normalize_row``, in order), so the chosen rows are the
    run's validation rows; ``prepare`` then sees only those, with ``val_fraction=0``.
    """
    from kitrec_fast.data.load import DatasetLoadError, load_raw
    from kitrec_fast.data.schema import BadRowError, normalize_row
    from kitrec_fast.data.split import stratified_split

    own = dataset == cfg.data.dataset and split == cfg.data.dataset_split
    mode = ("validation" if own else "all") if rows_mode == "auto" else rows_mode
    try:
        raw = load_raw(dataset, split)
    except DatasetLoadError as exc:
        raise EvalLossError(str(exc)) from None
    if own and cfg.data.limit is not None:
        raw = raw[: cfg.data.limit]  # the run split the first data.limit rows only
    data_cfg = dataclasses.replace(cfg.data, dataset=dataset, dataset_split=split, val_fraction=0.0, limit=None)
    if mode == "all":
        rows, ids, missing = rows_with_target(raw, dataset, split)
        if missing and console is not None:
            console.print(f"[yellow]note:[/] {missing} of {len(raw)} rows have no target ('output') and are left out")
        return data_cfg, rows, ids, mode
    rows_with_target(raw, dataset, split)  # fails once, clearly, rather than on every row below
    valid: list[tuple[int, Any]] = []
    for i, r in enumerate(raw):
        try:
            valid.append((i, normalize_row(r, i, require_target=True)))
        except BadRowError as exc:
            if cfg.data.on_bad_row == "error":
                raise EvalLossError(str(exc)) from None
    _, val_idx = stratified_split([row.user_type for _, row in valid], [row.user_id for _, row in valid],
                                  cfg.data.val_fraction, cfg.data.split_seed)
    ids = [valid[j][0] for j in val_idx]
    if not ids:
        raise EvalLossError(f"no validation rows: data.val_fraction={cfg.data.val_fraction} of {len(valid)} rows; "
                        "use --rows all with a dedicated validation set")
    return data_cfg, [raw[i] for i in ids], ids, mode


def _decoder_and_head(model):
    """The decoder stack and LM head under any peft wrapping (as the trainer's loss uses them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


def compute_row_losses(model, dataset, row_ids: Sequence[int], pad_token_id: int, label_smoothing: float,
                       batch_size: int, chunk_size: int = 1024, progress=None) -> list[RowLoss]:
    """Per-row smoothed and plain CE sums of a prepared dataset (``input_ids``/``labels`` columns)."""
    import torch

    from kitrec_fast.train.collator import KitrecCollator
    from kitrec_fast.train.loss import causal_lm_loss

    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    collate = KitrecCollator(pad_token_id=pad_token_id)
    # Longest first: similar lengths share a batch (little padding) and memory peaks early.
    order = sorted(range(len(dataset)), key=lambda i: -int(dataset[i]["length"]))
    out: list[Optional[RowLoss]] = [None] * len(dataset)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            records = [dataset[i] for i in idx]
            batch = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
            hidden = decoder(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), use_cache=False).last_hidden_state
            labels = batch["labels"].to(device)
            for k, (i, rec) in enumerate(zip(idx, records)):
                # One call per row: the loss is a per-row token mean, so its sums come back exact
                # (x tokens) and rows can be grouped by user type afterwards.
                res = causal_lm_loss(hidden[k: k + 1], head.weight, labels[k: k + 1],
                                     label_smoothing=label_smoothing, chunk_size=chunk_size,
                                     lm_head_bias=getattr(head, "bias", None))
                n = int((labels[k, 1:] != -100).sum())
                out[i] = RowLoss(row_id=row_ids[int(rec["source_index"])], user_id=rec["user_id"],
                                 user_type=rec["user_type"], tokens=n, loss_sum=float(res.loss) * n,
                                 nll_sum=float(res.nll) * n)
            if progress is not None:
                progress(len(idx))
    return [r for r in out if r is not None]


def run_eval_loss(run_dir: Path, *, dataset: Optional[str] = None, split: Optional[str] = None,
                  rows_mode: str = "auto", adapter: Optional[str] = None, backend: Optional[str] = None,
                  limit: Optional[int] = None, batch_size: Optional[int] = None, output: Optional[Path] = None,
                  console=None) -> dict:
    """Evaluate the run's adapter; writes the JSON report and returns it."""
    from kitrec_fast.console import make_console

    from kitrec_fast.artifacts import rundir

    console = console or make_console()
    if rows_mode not in ROWS_MODES:
        raise EvalLossError(f"--rows: must be one of {', '.join(ROWS_MODES)}, got {rows_mode!r}")
    run_dir = Path(run_dir)
    if not (run_dir / rundir.RESOLVED_CONFIG).is_file():
        raise EvalLossError(f"--run: {run_dir} has no {rundir.RESOLVED_CONFIG}")
    cfg = rundir.read_resolved_config(run_dir)
    if backend is not None and backend != cfg.backend:
        weights = "exact" if backend == "peft" else cfg.model.weights
        cfg = dataclasses.replace(cfg, backend=backend, model=dataclasses.replace(cfg.model, weights=weights))
    adapter = adapter or str(run_dir / rundir.ADAPTER_DIR)
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalLossError(f"--adapter: {adapter} has no adapter_config.json (did training finish?)")

    # The backend before transformers is imported anywhere: unsloth must patch it first.
    from kitrec_fast.backends import get_backend

    backend_module = get_backend(cfg.backend)
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.render.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    data_cfg, raw_rows, row_ids, mode = select_validation(cfg, dataset or cfg.data.dataset,
                                                          split or cfg.data.dataset_split, rows_mode, console)
    if limit is not None:
        raw_rows, row_ids = raw_rows[:limit], row_ids[:limit]
    tokenizer = load_tokenizer(cfg.data.tokenizer or resolve_model_path(cfg.model.name))
    prepared = prepare(data_cfg, tokenizer, rows=raw_rows, candidate_seed=cfg.data.split_seed)
    rows_ds = prepared.train  # val_fraction=0: every selected row lands in "train"
    skipped = prepared.report.get("skipped", [])
    console.print(f"[green]data[/] {len(rows_ds)} rows ({mode}) of {data_cfg.dataset} prepared in "
                  f"{time.perf_counter() - t0:.1f}s" + (f"; {len(skipped)} skipped" if skipped else ""))
    if len(rows_ds) == 0:
        raise EvalLossError("no rows left to evaluate after preparation")

    t1 = time.perf_counter()
    model = backend_module.load_for_inference(cfg, adapter, max_seq_length=cfg.data.max_length)
    model.eval()
    console.print(f"[green]model[/] {cfg.model.name} + {adapter} ({cfg.backend}) loaded in "
                  f"{time.perf_counter() - t1:.1f}s")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t2 = time.perf_counter()
    with Progress(TextColumn("[bold]eval loss[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("loss", total=len(rows_ds))
        losses = compute_row_losses(model, rows_ds, row_ids, tokenizer.pad_token_id, cfg.train.label_smoothing,
                                    batch_size or cfg.train.per_device_batch_size, cfg.train.loss_chunk_size,
                                    progress=lambda n: progress.advance(task, n))
    report = {
        "run_dir": str(run_dir), "adapter": adapter, "backend": cfg.backend, "model": cfg.model.name,
        "dataset": data_cfg.dataset, "split": data_cfg.dataset_split, "rows_mode": mode,
        "label_smoothing": cfg.train.label_smoothing, "max_length": cfg.data.max_length,
        "max_candidates": cfg.data.max_candidates, "candidate_seed": cfg.data.split_seed,
        "seconds": round(time.perf_counter() - t2, 2),
        **summarize(losses),
        "skipped": skipped,
        "per_row": [dataclasses.asdict(r) for r in sorted(losses, key=lambda r: r.row_id)],
    }
    out_path = Path(output) if output is not None else run_dir / "eval_loss.json"
    atomic_write_json(out_path, report)
    console.print(loss_table(report))
    console.print(f"wrote {out_path}")
    return report


def loss_table(report: dict):
    from rich.table import Table

    eps = report["label_smoothing"]
    table = Table(title=f"eval loss: {report['dataset']} ({report['rows_mode']}, {report['overall']['rows']} rows)")
    for col in ("group", "rows", "tokens", f"loss (eps={eps:g})", "CE", "perplexity"):
        table.add_column(col, justify="left" if col == "group" else "right")
    groups = {"overall": report["overall"], **report["per_user_type"]}
    for name, g in groups.items():
        table.add_row(name, str(g["rows"]), str(g["tokens"]), f"{g['loss']:.4f}", f"{g['nll']:.4f}",
                      f"{g['perplexity']:.3f}")
    return table


def add_loss_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from kitrec_fast.clihelp import command

    p = command(sub, "loss", "Loss and perplexity of a run's adapter on validation rows.",
                "kitrec-fast eval loss --run runs/music-smoke",
                description="Loss and perplexity of a run's adapter on validation rows: the smoothed loss, the "
                            "plain cross-entropy and the perplexity, with the training masking.")
    p.add_argument("--run", dest="run_dir", required=True, type=Path, help="run directory")
    p.add_argument("--dataset", help="dataset (default: the run's data.dataset)")
    p.add_argument("--split", help="split (default: the run's data.dataset_split)")
    p.add_argument("--rows", dest="rows_mode", choices=ROWS_MODES, default="auto",
                   help="validation: the run's held-out share; all: every row; auto (default): validation "
                        "for the run's dataset, all for another")
    p.add_argument("--adapter", help="adapter directory (default RUN_DIR/adapter)")
    p.add_argument("--backend", choices=["unsloth", "peft"], help="model backend (default: the run's)")
    p.add_argument("--limit", type=int, help="only the first N selected rows")
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default: train.per_device_batch_size)")
    p.add_argument("--output", type=Path, help="JSON report path (default RUN_DIR/eval_loss.json)")
    p.set_defaults(func=_loss_command)
    return p


def _loss_command(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    console = make_console()
    try:
        run_eval_loss(args.run_dir, dataset=args.dataset, split=args.split, rows_mode=args.rows_mode,
                      adapter=args.adapter, backend=args.backend, limit=args.limit, batch_size=args.batch_size,
                      output=args.output, console=console)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    return 0


__all__ = ["EvalLossError", "RowLoss", "rows_with_target", "add_loss_parser", "aggregate", "compute_row_losses", "run_eval_loss", "select_validation",
           "summarize"]
