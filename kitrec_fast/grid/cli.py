"""``kitrec-fast grid [RECIPE ...] [--sets A B] [--backends unsloth peft] [--smoke] [--output DIR]
[--address ADDR] [--eval-limit-per-type N] [KEY=VALUE ...]`` and ``kitrec-fast grid --status``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


DEFAULT_OUTPUT = "grid"
GRID_HELP = "Train and evaluate the paper's grid of recipes on Ray (GPUs, or --smoke on CPUs)."
GRID_EXAMPLES = ("kitrec-fast grid --smoke --backends peft --output grid-smoke",
                 "kitrec-fast grid dualft_music --sets A B --address auto --output /shared/grid")


def build_parser() -> argparse.ArgumentParser:
    from kitrec_fast.clihelp import parser

    p = parser("kitrec-fast grid", GRID_HELP, *GRID_EXAMPLES,
               description="Train and evaluate a grid of recipes on Ray: one fresh process per job, one GPU each "
                           "(--smoke: one CPU each). Rerunning the same command continues the grid.")
    p.add_argument("recipes", nargs="*", metavar="RECIPE",
                   help="recipe families (dualft_music ...) or full names (dualft_music_setb); default: all four")
    p.add_argument("--sets", nargs="+", type=str.upper, default=None, metavar="SET", help="A and/or B (default both)")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                   help="unsloth and/or peft (default unsloth, the fast path)")
    p.add_argument("--smoke", action="store_true", help="tiny model, embedded data, one CPU per job")
    p.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT),
                   help=f"grid folder: runs, predictions, scores, state and report (default ./{DEFAULT_OUTPUT}); "
                        "on a cluster it must be on storage every node sees")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (also RAY_ADDRESS); default: start one on this machine")
    p.add_argument("--eval-limit-per-type", type=int, default=None, metavar="N",
                   help="evaluate only the first N test rows of each user type")
    p.add_argument("--eval-max-new-tokens", type=int, default=None, metavar="N",
                   help="generation length for evaluation (default: eval generate's)")
    p.add_argument("--base", dest="eval_base", choices=["auto", "original", "trained"], default=None,
                   help="the base each adapter is evaluated on (as `eval generate --base`; default: each run's "
                        "model.eval_base from its recipe and overrides, else auto)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="retries of a stage whose worker died or was killed (default 2)")
    p.add_argument("--status", action="store_true", help="print the grid state of --output and exit")
    return p


def _is_recipe_name(tok: str) -> bool:
    from kitrec_fast.recipes import FAMILIES

    base, sep, s = tok.rpartition("_set")
    return tok in FAMILIES or (bool(sep) and base in FAMILIES and s.upper() in ("A", "B"))


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """``KEY=VALUE`` tokens are overrides and recipe names are recipes wherever they stand (never
    values of --sets/--backends); a token right after a single-value option (``--output a=b``)
    stays that option's value. Returns (argv for the parser, overrides)."""
    takes_one = {s for a in parser._actions if a.nargs is None and a.option_strings for s in a.option_strings}
    recipes, rest, overrides = [], [], []
    for i, tok in enumerate(argv):
        after_option = i > 0 and argv[i - 1] in takes_one
        if tok.startswith("-") or after_option:
            rest.append(tok)
        elif "=" in tok:
            overrides.append(tok)
        elif _is_recipe_name(tok):
            recipes.append(tok)
        else:
            rest.append(tok)
    return recipes + rest, overrides


def make_spec(args, overrides: list[str]):
    from kitrec_fast.errors import did_you_mean
    from kitrec_fast.grid.spec import SETS, GridError, GridSpec
    from kitrec_fast.recipes import FAMILIES

    families, pinned = [], []
    for name in args.recipes:
        base, sep, s = name.rpartition("_set")
        if sep and base in FAMILIES and s.upper() in SETS:
            pinned.append((base, s.upper()))
        elif name in FAMILIES:
            families.append(name)
        else:
            raise GridError(f"unknown recipe {name!r}{did_you_mean(name, FAMILIES)}; "
                            f"one of: {', '.join(FAMILIES)} "
                            "(or a full name such as dualft_music_setb)")
    if not args.recipes:
        families = list(FAMILIES)
    return GridSpec(output=args.output.resolve(), families=tuple(families), sets=tuple(args.sets or SETS),
                    backends=tuple(args.backends or ("unsloth",)), smoke=args.smoke, overrides=tuple(overrides),
                    eval_limit_per_type=args.eval_limit_per_type, eval_max_new_tokens=args.eval_max_new_tokens,
                    eval_base=getattr(args, "eval_base", None), max_retries=args.max_retries, pinned=tuple(pinned))


def _dry_run(job) -> str | None:
    """The recipe command's own --dry-run: the one place that knows every key and value rule."""
    proc = subprocess.run([sys.executable, *job.train_command(dry_run=True)], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    text = (proc.stderr + "\n" + proc.stdout).strip().splitlines()
    errors = [ln for ln in text if "error" in ln.lower()] or text[-3:]
    line = errors[0].replace("[red]", "").replace("[/]", "").strip()
    return line[len("error"):].lstrip(": ") if line.lower().startswith("error") else line


def validate_jobs(jobs) -> None:
    from kitrec_fast.grid.spec import GridError

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_dry_run, jobs))
    bad = [(j, err) for j, err in zip(jobs, results) if err]
    if bad:
        job, err = bad[0]
        others = f" (and {len(bad) - 1} more job(s))" if len(bad) > 1 else ""
        raise GridError(f"{job.id}{others}: the recipe refuses the grid's options: {err}")


def show_status(output: Path, console) -> int:
    from kitrec_fast.grid.progress import jobs_table
    from kitrec_fast.grid.spec import GridError
    from kitrec_fast.grid.state import read_state, start_phase, state_path

    state = read_state(output)
    if state is None:
        raise GridError(f"--status: {state_path(output)} does not exist (no grid ran with --output {output})")
    phase = start_phase(state)
    if phase is not None:
        console.print(phase)
    console.print(jobs_table(state, title=f"grid {output}"))
    for job_id, r in state["jobs"].items():
        if r.get("error"):
            console.print(f"[red]{job_id}[/] {r['error']}")
    return 0


GRID_LOCK = ".grid.lock"


def run_grid(argv: list[str]) -> int:
    import contextlib

    with contextlib.ExitStack() as held:
        return _run_grid(argv, held)


def _run_grid(argv: list[str], held) -> int:
    from kitrec_fast.console import make_console
    from kitrec_fast.grid.state import mark_starting, merge_state, read_state, state_path, write_state

    parser = build_parser()
    rest, overrides = split_overrides(argv, parser)
    args = parser.parse_intermixed_args(rest)
    console = make_console()
    if args.status:
        return show_status(args.output.resolve(), console)
    spec = make_spec(args, overrides)
    # One grid at a time in an output folder, which may be shared by several nodes: see
    # kitrec_fast/dirlock.py for why the lock holds there. Its own file: the jobs' run directories
    # and evaluation folders inside the folder are locked by the jobs, each on its own.
    from kitrec_fast.dirlock import hold_made

    held.enter_context(hold_made(spec.output, GRID_LOCK, "--output", "another grid"))
    command = " ".join(["kitrec-fast", "grid"] + [shlex.quote(a) for a in argv])
    old = read_state(spec.output)
    state = merge_state(spec, old, command)
    todo = [j for j in spec.jobs() if state["jobs"][j.id]["state"] != "done"]
    from kitrec_fast.grid.report import write_report

    if not todo:
        paths = write_report(spec, state)
        console.print(f"[green]grid {spec.output} is finished[/] ({len(spec.jobs())} jobs done); nothing to do. "
                      f"Report: {paths['md']}")
        return 0
    from kitrec_fast.grid.cluster import check_address, check_gpus, check_shared_output, connect

    # Checking the jobs and starting Ray take a minute or two before the first job: each step is
    # said here as it begins and recorded in the state file for `grid --status` in another terminal.
    output_existed = spec.output.is_dir()
    state.pop("starting", None)  # a start that was killed earlier is over; this one starts now

    def starting(doing: str) -> None:
        mark_starting(state, doing)
        write_state(spec.output, state)
        console.print(f"grid: {doing}")

    def forget_start() -> None:
        """A grid stopped before its first job leaves the output folder as it found it (a new one:
        no state file that would say a grid ran)."""
        if old is None:
            state_path(spec.output).unlink(missing_ok=True)
            if not output_existed and spec.output.is_dir() and not any(spec.output.iterdir()):
                spec.output.rmdir()
        else:
            state.pop("starting", None)
            write_state(spec.output, state)

    connected = started = False
    try:
        starting(f"checking the options of {len(todo)} job(s) (each recipe's --dry-run)")
        check_address(args.address)  # seconds, where validating the jobs' options takes longer
        validate_jobs(todo)
        address = args.address or os.environ.get("RAY_ADDRESS")
        starting(f"joining the Ray cluster at {address}" if address else "starting Ray on this machine")
        connected = True  # from here on Ray may hold a connection, even when connect fails halfway
        joined = connect(args.address)
        check_gpus(spec.smoke, args.address)
        if joined:
            starting("checking that every node sees the output folder")
            check_shared_output(spec.output)
        from kitrec_fast.grid.runner import GridRunner

        console.print(f"grid: {len(todo)} of {len(spec.jobs())} job(s) to run; state in "
                      f"{spec.output / 'grid_state.json'} (kitrec-fast grid --status --output {spec.output})")
        state.pop("starting", None)
        started = True
        write_state(spec.output, state)
        state = GridRunner(spec, state, console).run()
    except KeyboardInterrupt:
        if not started:
            forget_start()
            console.print("[yellow]interrupted[/] before the first job started; nothing ran")
            return 130
        write_state(spec.output, state)
        console.print("[yellow]interrupted[/]: running jobs stop with their Ray workers; rerun the same command "
                      "to continue (training resumes from its newest checkpoint)")
        return 130
    except BaseException:
        if not started:
            forget_start()
        raise
    finally:
        if connected:
            import ray

            ray.shutdown()
    paths = write_report(spec, state)
    failed = [j.id for j in spec.jobs() if state["jobs"][j.id]["state"] != "done"]
    console.print(f"report: {paths['json']}, {paths['md']}, {paths['png']}")
    if failed:
        console.print(f"[red]{len(failed)} job(s) failed[/]: {', '.join(failed)}; rerun the same command to retry them")
        return 1
    console.print(f"[green]grid finished[/]: {len(spec.jobs())} job(s)")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from kitrec_fast.errors import run_cli

    return run_cli(run_grid, args.grid_argv)


def add_parser(sub) -> None:
    # The grid parses its own arguments (KEY=VALUE anywhere, recipes before or after options), so
    # the subcommand only collects them.
    from kitrec_fast.clihelp import command

    p = command(sub, "grid", GRID_HELP, *GRID_EXAMPLES, add_help=False, prefix_chars="\x00")
    p.add_argument("grid_argv", nargs=argparse.REMAINDER, help="the grid's own arguments (kitrec-fast grid --help)")
    p.set_defaults(func=_grid)


def main(argv: list[str] | None = None) -> int:
    from kitrec_fast.errors import run_cli

    return run_cli(run_grid, argv)


if __name__ == "__main__":
    raise SystemExit(main())
