"""The ``eval generate`` command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kitrec_fast.errors import UserError
from kitrec_fast.eval.generate.options import GenerateOptions


def add_generate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from kitrec_fast.clihelp import command

    p = command(sub, "generate", "Generate greedy answers for a test set, one resumable JSONL line per row.",
                "kitrec-fast eval generate --run runs/music-smoke --dataset embedded:test_music --limit 8 "
                "--output eval-smoke/",
                "kitrec-fast eval generate --run runs/a runs/b --dataset Younggooo/kitrec-test-seta --engine vllm "
                "--output eval-grid/",
                description="Generate greedy answers for a test set, one JSONL line per row.\n\n"
                            "Prompts keep every candidate, as the paper evaluates, unless --max-candidates or "
                            "--max-prompt-tokens cut them with the training truncation (the ground truth is always "
                            "kept; a cut is recorded in generate_config.json). Rerunning the same command resumes: "
                            "rows already in predictions.jsonl are kept, a torn last line is dropped, and the rest "
                            "is generated. Several --run directories on one base share one engine and write "
                            "OUTPUT/<run name>/ each.")
    add_model_arguments(p.add_argument_group("model"), several_runs=True)
    data = p.add_argument_group("rows")
    data.add_argument("--dataset", required=True, help="Hub id, local .jsonl/.json/.parquet, or embedded:NAME")
    data.add_argument("--split", default="test", help="dataset split (default test)")
    data.add_argument("--limit", type=int, help="only the first N selected rows")
    data.add_argument("--limit-per-type", type=int, metavar="N",
                      help="only the first N rows of each user type (a quick look at every type in one call)")
    data.add_argument("--user-type", dest="user_types", action="extend", nargs="+", default=[], metavar="T",
                      help="only rows of these user types (repeatable)")
    data.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                      help="a row failing validation: stop (default) or skip it and report it")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=2048, help="length limit of each answer")
    gen.add_argument("--batch-size", type=int, help="rows per generate call (default 4; vLLM: 256, also its max_num_seqs)")
    gen.add_argument("--max-candidates", type=int, metavar="N",
                     help="cut each prompt to N candidates with the training truncation, ground truth kept "
                          "(default: keep all, as the paper evaluates; a cut is recorded and makes the "
                          "numbers incomparable with uncut ones)")
    gen.add_argument("--max-prompt-tokens", type=int, metavar="N",
                     help="also cut history/candidates to fit N prompt tokens (default: no cut)")
    gen.add_argument("--no-sort", dest="sort_by_length", action="store_false",
                     help="keep dataset order instead of batching by prompt length")
    gen.add_argument("--prepare-only", action="store_true",
                     help="build every pending prompt, record the longest in generate_config.json and stop "
                          "(no model; a check before a long GPU job)")
    p.add_argument("--output", required=True, type=Path, help="output directory (predictions.jsonl goes here)")
    p.set_defaults(func=_generate_command)
    return p


def add_model_arguments(src, several_runs: bool = False) -> None:
    """The run, model and engine options; shared with `kitrec-fast recommend` (one run there)."""
    if several_runs:
        src.add_argument("--run", dest="runs", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                         help="run directory (resolved_config.yaml + adapter/); several runs of one base: one "
                              "engine, OUTPUT/<run name>/ each")
    else:
        src.add_argument("--run", dest="run_dir", type=Path, help="run directory (resolved_config.yaml + adapter/)")
    src.add_argument("--model", help="base model (Hub id, directory, testkit:tiny-qwen3); overrides the run's")
    src.add_argument("--adapter", help="adapter directory (default with --run: RUN_DIR/adapter; without: none)")
    src.add_argument("--backend", choices=["unsloth", "peft"], help="model backend (default: the run's, else unsloth)")
    src.add_argument("--engine", choices=["auto", "hf", "vllm"], default="auto",
                     help="hf: backend model.generate; vllm: vLLM, unquantized base + LoRA requests; "
                          "auto (default): vllm where installed and a GPU is present, else hf")
    src.add_argument("--base", choices=["auto", "original", "trained"], default=None,
                     help="the base the adapter is served on: original (the base checkpoint, unquantized), "
                          "trained (the 4-bit weights training saw; on vllm a dequantized copy built once into "
                          "the cache), auto: hf trained, vllm original (default: the run's model.eval_base, "
                          "else auto)")
    src.add_argument("--tokenizer", help="tokenizer (default: the run's data.tokenizer, else the model's)")


def _generate_command(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    from kitrec_fast.eval.generate.command import run_generate

    console = make_console()
    command = " ".join(["kitrec-fast"] + [shlex.quote(a) for a in sys.argv[1:]])
    try:
        opts = GenerateOptions(**{f: getattr(args, f) for f in GenerateOptions.__dataclass_fields__
                                  if hasattr(args, f)})
        run_generate(opts, console, command)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    return 0
