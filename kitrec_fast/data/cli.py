"""``kitrec-fast data prepare | synth | inspect``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kitrec_fast.badrow import row_label
from kitrec_fast.config import ConfigError, DataConfig
from kitrec_fast.console import make_console
from kitrec_fast.errors import UserError
from kitrec_fast.fsio import check_writable, refused_writes

_D = DataConfig.__dataclass_fields__  # the defaults live in DataConfig; the flags only name them


def add_parser(subparsers: Any) -> None:
    from kitrec_fast.clihelp import command

    data = command(subparsers, "data", "Prepare, generate or inspect KitREC training data.",
                   "kitrec-fast data prepare --dataset embedded:dualft_music --tokenizer offline:qwen3 --output prepared/")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = command(sub, "prepare", "Load, split, truncate and tokenize a dataset; save it with a report.",
                "kitrec-fast data prepare --dataset embedded:dualft_music --tokenizer offline:qwen3 --output prepared/",
                "kitrec-fast data prepare --dataset rows.jsonl --tokenizer Qwen/Qwen3-14B --on-bad-row skip "
                "--output prepared/")
    _common(p)
    p.add_argument("--max-length", type=int, default=_D["max_length"].default, help="token budget of a whole conversation")
    p.add_argument("--max-candidates", type=int, default=_D["max_candidates"].default, help="candidates kept in every prompt")
    p.add_argument("--min-candidates", type=int, default=_D["min_candidates"].default, help="floor for further candidate cuts")
    p.add_argument("--history-recent", choices=("last", "first"), default=_D["history_recent"].default,
                   help="which end of a history list is the most recent item")
    _keep_cited(p)
    p.add_argument("--val-fraction", type=float, default=_D["val_fraction"].default,
                   help="share of the rows held out for validation (by user, so no user is in both)")
    p.add_argument("--split-seed", type=int, default=_D["split_seed"].default,
                   help="seed of the train/validation split (the same seed gives the same split)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default=_D["on_bad_row"].default,
                   help="a row failing validation: stop with its line number (error), or leave it out and list "
                        "it in report.json (skip)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    p.add_argument("--output", required=True, help="directory for train/, validation/ and report.json")
    p.set_defaults(func=cmd_prepare)

    s = command(sub, "synth", "Write synthetic KitREC rows as JSON lines.",
                "kitrec-fast data synth --rows 200 --output rows.jsonl",
                "kitrec-fast data synth --rows 50 --split test --domain movies --layout mixed --output test.jsonl.gz")
    s.add_argument("--rows", type=int, required=True, help="number of rows to write (at least 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same rows)")
    s.add_argument("--domain", choices=("music", "movies"), default="music", help="target domain of the candidates")
    s.add_argument("--kind", choices=("dualft", "singleft"), default="dualft",
                   help="dualft: Books plus target-domain history; singleft: Books history only")
    s.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="train rows carry the reasoning target; val/test rows the ground truth only")
    s.add_argument("--layout", choices=("plain", "template", "mixed"), default="plain",
                   help="val/test rows: training-style prompts with flat fields, the documented evaluation "
                        "template with nested metadata, or a per-row mix of every documented form")
    s.add_argument("--output", required=True, help="output .jsonl (or .jsonl.gz)")
    s.set_defaults(func=cmd_synth)

    i = command(sub, "inspect", "Show one rendered sample with its trained span, and a length histogram.",
                "kitrec-fast data inspect --dataset embedded:dualft_music --tokenizer offline:qwen3 --row 3")
    _common(i)
    i.add_argument("--row", type=int, default=1,
                   help="row to show, counted from 1 (the file line in a .jsonl file), as error messages count")
    i.add_argument("--max-length", type=int, default=5120, help="token budget of a whole conversation")
    _keep_cited(i)
    i.add_argument("--limit", type=int, default=256, help="rows rendered for the histogram")
    i.set_defaults(func=cmd_inspect)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="Hub id, local .jsonl/.json/.parquet(.gz) or embedded:NAME")
    p.add_argument("--dataset-split", default="train", help="split of a Hub dataset")
    p.add_argument("--tokenizer", required=True, help="tokenizer id or directory, or offline:qwen3")


def _keep_cited(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-cited-candidates", action="store_true",
                   help="keep the candidates the training target cites first in the cut (data.keep_cited_candidates; "
                        "default: the published cut, which keeps only the ground truth for sure)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from kitrec_fast.data.load import check_dataset
    from kitrec_fast.data.pipeline import prepare, save_prepared
    from kitrec_fast.render.tokenizer import load_tokenizer

    console = make_console()
    t0 = time.perf_counter()
    try:
        cfg = DataConfig(dataset=args.dataset, dataset_split=args.dataset_split, tokenizer=args.tokenizer,
                         val_fraction=args.val_fraction, split_seed=args.split_seed, max_length=args.max_length,
                         max_candidates=args.max_candidates, min_candidates=args.min_candidates,
                         history_recent=args.history_recent, on_bad_row=args.on_bad_row, limit=args.limit,
                         keep_cited_candidates=args.keep_cited_candidates)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    check_writable(args.output, "--output", replaced_whole=True)
    try:
        check_dataset(args.dataset)  # before the tokenizer: a missing file or an unreachable Hub fails at once
        tok = load_tokenizer(args.tokenizer)
        with rows_progress(console) as progress:
            prepared = prepare(cfg, tok, progress=progress)
        with refused_writes(args.output, "--output"):
            out = save_prepared(prepared, args.output)
    except (UserError, ValueError) as exc:  # BadRowError, DatasetLoadError, RenderError...: messages name row/option
        raise UserError(str(exc)) from None  # one `error:` line, exit 2, like every user error
    print_summary(console, prepared.report, time.perf_counter() - t0, out)
    return 0


class rows_progress:
    """A rows / rows-per-second bar fed by ``prepare(progress=...)``; silent when output is not a terminal."""

    def __init__(self, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("preparing rows"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(),
                                  console=console, transient=True, disable=not console.is_terminal)
        self._task = None
        self._t0 = time.perf_counter()

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task(stage, total=total or None, rate="-")
        rate = done / max(time.perf_counter() - self._t0, 1e-9)
        self._progress.update(self._task, completed=done, rate=f"{rate:,.0f}")


def print_summary(console: Any, report: dict, seconds: float, out: Any) -> None:
    from rich.table import Table

    rows = report["rows"]
    console.print(f"[bold]kitrec-fast data prepare[/bold]: {rows['loaded']} rows from {report['dataset']} "
                  f"-> {out} in {seconds:.1f} s")
    t = Table(title="rows per user type (in -> out)")
    t.add_column("user type")
    t.add_column("train", justify="right")
    t.add_column("validation", justify="right")
    for ut, d in report["per_user_type"].items():
        t.add_row(ut, f"{d['train']['in']} -> {d['train']['out']}", f"{d['validation']['in']} -> {d['validation']['out']}")
    t.add_row("[bold]total[/bold]", f"{rows['train']['in']} -> {rows['train']['out']}",
              f"{rows['validation']['in']} -> {rows['validation']['out']}")
    console.print(t)
    tok = Table(title=f"tokens per conversation (budget {report['tokens']['max_length']})")
    for c in ("", "p50", "p90", "p95", "p99", "max"):
        tok.add_column(c, justify="right")
    for name in ("before", "after", "trained"):
        d = report["tokens"][name]
        tok.add_row(name, *(f"{d.get(k, 0):.0f}" for k in ("p50", "p90", "p95", "p99", "max")))
    console.print(tok)
    tr = report["truncation"]
    cuts = Table(title="truncation and skipped rows")
    cuts.add_column("what")
    cuts.add_column("count", justify="right")
    cuts.add_row("candidates cut", str(tr["rows_candidates_cut"]))
    cuts.add_row("  of which below max_candidates", str(tr["rows_candidates_below_max"]))
    cuts.add_row("target cites a candidate the cut removed" + (" (cited kept first)" if tr["keep_cited_candidates"]
                                                                else ""),
                 f"{tr['rows_cited_cut']} rows, {tr['cited_ids_cut']} ids")
    cuts.add_row("history cut", str(tr["rows_history_cut"]))
    for section, lines in tr["history_lines_dropped"].items():
        cuts.add_row(f"  {section} lines dropped", str(lines))
    cuts.add_row("skipped", str(rows["skipped"]))
    for stage, n in report["skipped_by_stage"].items():
        cuts.add_row(f"  at {stage}", str(n))
    console.print(cuts)
    for s in report["skipped"][:10]:
        console.print(f"  [yellow]skipped[/yellow] {row_label(s['row'] - 1)}, user_id={s['user_id']!r} "
                      f"({s['stage']}): {s['problem']}")


def cmd_synth(args: argparse.Namespace) -> int:
    from kitrec_fast.data.synth import generate_rows, write_jsonl

    if args.rows < 1:  # an empty file would only be refused later by every command that reads it
        raise UserError(f"--rows: must be >= 1, got {args.rows}")
    check_writable(args.output, "--output", file=True)
    try:
        rows = generate_rows(args.rows, seed=args.seed, domain=args.domain, kind=args.kind, split=args.split,
                             layout=args.layout)
    except ValueError as exc:  # e.g. --rows -1, --layout template with --split train
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write_jsonl(args.output, rows)
    print(f"wrote {args.rows} rows to {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.text import Text

    from kitrec_fast.data.pipeline import prepare
    from kitrec_fast.render.tokenizer import load_tokenizer

    console = make_console()
    if args.row < 1:
        console.print(f"[red]error:[/red] --row: rows are counted from 1, got {args.row}")
        return 2
    limit = max(args.limit, args.row)
    cfg = DataConfig(dataset=args.dataset, dataset_split=args.dataset_split, tokenizer=args.tokenizer,
                     val_fraction=0.0, max_length=args.max_length, on_bad_row="skip", limit=limit,
                     keep_cited_candidates=args.keep_cited_candidates)
    try:
        tok = load_tokenizer(args.tokenizer)
        prepared = prepare(cfg, tok, verify_rows=0)
    except (UserError, ValueError) as exc:  # DatasetLoadError, TokenizerError, RenderError: messages name the option
        console.print(f"[red]error:[/red] {exc}")
        return 2
    ds = prepared.train
    hits = [k for k, src in enumerate(ds["source_index"]) if src == args.row - 1]
    if not hits:
        loaded = prepared.report["rows"]["loaded"]
        skipped = [s for s in prepared.report["skipped"] if s.get("row") == args.row]
        why = f"it was skipped: {skipped[0].get('problem')}" if skipped else f"the dataset has {loaded} rows"
        console.print(f"[red]error:[/red] cannot show row {args.row}; {why}")
        return 2
    ex = ds[hits[0]]
    ids, labels = ex["input_ids"], ex["labels"]
    start = next(k for k, lab in enumerate(labels) if lab != -100)
    text = Text()
    text.append(tok.decode(ids[:start]), style="dim")
    if not console.is_terminal:  # no colour when piped: mark where the trained span starts
        text.append("\n>>> trained span (labels) starts here >>>\n")
    text.append(tok.decode(ids[start:]), style="bold green")
    console.rule(f"row {args.row}  user {ex['user_id']}  ({ex['user_type']})  {ex['length']} tokens, "
                 f"{ex['num_trained']} trained (green)")
    console.print(text)
    _print_cited(console, args, tok.decode(ids[:start]), prepared.report["truncation"])
    lengths = np.asarray(ds["length"])
    console.rule(f"length histogram over {len(lengths)} rows (budget {args.max_length})")
    counts, edges = np.histogram(lengths, bins=10)
    peak = max(int(counts.max()), 1)
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        console.print(f"{lo:7.0f}-{hi:7.0f} | {'#' * int(round(40 * c / peak)):<40} {c}")
    return 0


def _print_cited(console: Any, args: argparse.Namespace, shown_prompt: str, truncation: dict) -> None:
    """Which candidates the shown row's target cites that its (cut) prompt no longer shows, and the total."""
    import itertools

    from kitrec_fast.data.load import iter_raw
    from kitrec_fast.data.schema import normalize_row
    from kitrec_fast.truncate.sections import parse_prompt
    from kitrec_fast.truncate.truncate import cited_candidates

    raw, _ = iter_raw(args.dataset, args.dataset_split)
    row = normalize_row(next(itertools.islice(raw, args.row - 1, None)), args.row - 1, require_target=True)
    cited = sorted(cited_candidates(row.parsed, row.target) - {row.gt_item_id})
    shown = set(parse_prompt(shown_prompt).candidate_ids)
    gone = [c for c in cited if c not in shown]
    how = "cited kept first" if truncation["keep_cited_candidates"] else "published cut; --keep-cited-candidates keeps them"
    console.print(f"cited candidates: the target names {len(cited)} candidate(s) besides the ground truth; "
                  f"{len(gone)} of them not in the prompt above{': ' + ', '.join(gone) if gone else ''} ({how})")
    console.print(f"over the {truncation['candidates_after'].get('count', 'rendered')} rows below: "
                  f"{truncation['rows_cited_cut']} rows cite candidates the cut removed "
                  f"({truncation['cited_ids_cut']} ids)", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    from kitrec_fast.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
