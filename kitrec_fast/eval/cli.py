"""``kitrec-fast eval ...``: score a predictions file, compare runs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from kitrec_fast.clihelp import command

    parser = command(subparsers, "eval", "Evaluate trained adapters: generate, score, compare, loss.",
                     "kitrec-fast eval generate --run runs/music-smoke --dataset embedded:test_music --limit 8 "
                     "--output eval-smoke/")
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    _add_score(sub)
    _add_compare(sub)
    # --- Subcommands owned by other modules register here (one import + one call each), e.g.:
    #   from kitrec_fast.eval.generate import add_generate_parser
    #   add_generate_parser(sub)
    # Import them inside this function so `eval score` never loads the generation stack.
    from kitrec_fast.eval.generate import add_generate_parser
    add_generate_parser(sub)
    from kitrec_fast.eval.eval_loss import add_loss_parser
    add_loss_parser(sub)
    # --- end of externally registered subcommands
    return parser


def _add_protocol(p: argparse.ArgumentParser) -> None:
    from kitrec_fast.eval.protocol import DEFAULT_PROTOCOL, PROTOCOLS

    p.add_argument("--protocol", choices=list(PROTOCOLS), default=DEFAULT_PROTOCOL,
                   help="kitrec (default): the paper's rules (invalid ids dropped, repeats keep their places); "
                        "strict: every emitted entry occupies its rank")


def _add_score(sub: argparse._SubParsersAction) -> None:
    from kitrec_fast.clihelp import command

    p = command(sub, "score", "Score a predictions file: Hit@K, MRR and NDCG overall and per user type.",
                "kitrec-fast eval score --predictions eval-smoke/predictions.jsonl --output eval-smoke/")
    p.add_argument("--predictions", required=True, type=Path, help="predictions JSONL file")
    p.add_argument("--output", required=True, type=Path, help="directory for report.json/.md and PNGs")
    _add_protocol(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run_score)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from kitrec_fast.clihelp import command

    p = command(sub, "compare", "Compare runs on the same rows, each against the first (paired tests).",
                "kitrec-fast eval compare eval-a/ eval-b/ --output compare/",
                description="Compare runs on the same rows, each against the first (paired tests). Two runs: "
                            "B against A. More: each RUN against BASELINE in one table, with one Holm correction "
                            "over every (run, metric) test.")
    p.add_argument("a", type=Path, metavar="BASELINE",
                   help="run A (the baseline): predictions JSONL, an `eval score` or an `eval generate` output "
                        "directory")
    p.add_argument("b", type=Path, nargs="+", metavar="RUN",
                   help="run B (or several): same kinds as A; differences are B - A")
    _add_protocol(p)
    p.add_argument("--force", action="store_true",
                   help="compare even when protocols or candidate counts differ (the result says so)")
    p.add_argument("--output", type=Path, default=None, help="directory for compare.json/.md")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run_compare)


def run_score(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    from kitrec_fast.eval.score import score_predictions, write_report
    from kitrec_fast.fsio import check_writable, refused_writes

    from kitrec_fast.errors import UserError

    check_writable(args.output, "--output")
    console = make_console()
    try:
        report = score_predictions(args.predictions, protocol=args.protocol, n_bootstrap=args.bootstrap,
                                   seed=args.seed)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    with refused_writes(args.output, "--output"):
        paths = write_report(report, args.output)
    console.print(_score_table(report))
    cands = report.overall.candidates
    if cands["min"] != cands["max"]:
        console.print(f"[yellow]warning:[/] candidates per row differ ({cands['min']}-{cands['max']}); "
                      "Hit@K over different candidate counts mixes different tasks")
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    from kitrec_fast.eval.compare import compare_many, compare_runs, write_comparison
    from kitrec_fast.fsio import check_writable

    from kitrec_fast.errors import UserError

    if args.output is not None:
        check_writable(args.output, "--output")
    console = make_console()
    options = dict(protocol=args.protocol, force=args.force, n_bootstrap=args.bootstrap, seed=args.seed)
    try:
        if len(args.b) == 1:
            result = compare_runs(args.a, args.b[0], **options)
        else:
            result = compare_many(args.a, args.b, **options)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    for warning in (w for r in result.get("comparisons", [result]) for w in r["warnings"]):
        console.print(f"[bold red]WARNING:[/] {warning}", highlight=False)
    console.print(_compare_table(result) if len(args.b) == 1 else _many_table(result))
    if args.output is not None:
        paths = write_comparison(result, args.output)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _score_table(report: Any) -> Any:
    from rich.table import Table

    cands = report.overall.candidates
    span = "?" if cands["min"] is None else (
        str(cands["min"]) if cands["min"] == cands["max"] else f"{cands['min']}-{cands['max']}")
    table = Table(title=f"KitREC scores: {report.overall.n} rows, {span} candidates each, "
                        f"protocol {report.protocol}")
    table.add_column("group")
    table.add_column("n", justify="right")
    for name in report.metric_names:
        table.add_column(name, justify="right")
    for col in ("parse err (paper)", "no answer", "invalid", "conf MAE"):
        table.add_column(col, justify="right")
    for name, g in report.groups().items():
        table.add_row(
            name,
            str(g.n),
            *(_num(g.metrics[m]) for m in report.metric_names),
            _pct(g.rates["paper_parse_error_rate"]),
            _pct(g.rates["parse_failure_rate"]),
            _pct(g.rates["invalid_item_rate"]),
            _num(g.calibration["mae"]),
        )
    return table


def _compare_table(result: Mapping[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    # the title says which run is which: "B - A" alone leaves the reader to recall the argument order
    table = Table(title=f"B - A over {result['n_pairs']} paired rows (Holm-corrected paired t-test)\n"
                        f"A: {escape(str(result['a']))}\nB: {escape(str(result['b']))}")
    ci_label = f"{int(round(100 * (1 - result['alpha'])))}% CI"
    for col in ("metric", "A", "B", "B - A", ci_label, "p", "p (Holm)", "significant"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in result["metrics"].items():
        table.add_row(name, *_metric_cells(m))
    return table


def _metric_cells(m: Mapping[str, Any]) -> list[str]:
    """Means, difference, interval, p-values and verdict of one compared metric, as table cells."""
    from rich.markup import escape

    from kitrec_fast.eval.compare import fmt_num, fmt_p

    return [fmt_num(m["mean_a"]), fmt_num(m["mean_b"]), fmt_num(m["mean_diff"], signed=True),
            escape(f"[{fmt_num(m['ci_low'], signed=True)}, {fmt_num(m['ci_high'], signed=True)}]"),
            fmt_p(m["p"]), fmt_p(m["p_holm"]), "[bold green]yes[/]" if m["significant"] else "no"]


def _many_table(result: Mapping[str, Any]) -> Any:
    """One row per (run, metric): the run's mean, its difference from the baseline, one Holm family."""
    from rich.markup import escape
    from rich.table import Table

    comps = result["comparisons"]
    base, *names = _short_labels([result["baseline"]] + [c["b"] for c in comps])
    table = Table(title=f"each run - baseline {base} ({len(comps)} runs; paired t-test, Holm over "
                        f"all {result['holm_family']} tests)")
    ci_label = f"{int(round(100 * (1 - result['alpha'])))}% CI"
    for col in ("run", "metric", "baseline", "run mean", "run - baseline", ci_label, "p", "p (Holm)", "significant"):
        table.add_column(col, justify="left" if col in ("run", "metric") else "right")
    for k, comp in enumerate(comps):
        for j, (name, m) in enumerate(comp["metrics"].items()):
            table.add_row(escape(names[k]) if j == 0 else "", name, *_metric_cells(m),
                          end_section=j == len(comp["metrics"]) - 1 and k < len(comps) - 1)
    return table


def _short_labels(labels: list[str]) -> list[str]:
    """Run paths without the folders they all share, so the table shows what tells them apart."""
    import os

    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(x)) for x in labels])
    except ValueError:  # mixed drives, or labels that are not paths
        return labels
    return [os.path.relpath(os.path.abspath(x), common) for x in labels]


def _num(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
