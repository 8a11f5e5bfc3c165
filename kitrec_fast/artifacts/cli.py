"""``kitrec-fast export RUN_DIR --merged-16bit OUT`` and ``kitrec-fast push RUN_DIR --repo NAME``."""

from __future__ import annotations

from kitrec_fast.errors import UserError
from kitrec_fast.fsio import check_writable


def add_parser(sub) -> None:
    from kitrec_fast.clihelp import command

    e = command(sub, "export", "Merge the run's adapter into 16-bit base weights.",
                "kitrec-fast export runs/dualft_music_seta-unsloth --merged-16bit merged/dualft_music_seta",
                description="Merge the run's adapter into 16-bit base weights, a model any loader (transformers, "
                            "vLLM) serves without PEFT. The merge is done in float32 on the unquantized base.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a finished training (with adapter/)")
    e.add_argument("--merged-16bit", dest="out", required=True, metavar="OUT",
                   help="output directory (new or empty; not inside the run directory)")
    e.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="dtype of the written weights (default bfloat16; the merge itself is done in float32)")
    e.add_argument("--base-model", help="another base checkpoint to merge onto (default: the run's weights)")
    e.set_defaults(func=_export)

    p = command(sub, "push", "Upload the run's adapter and records to the Hugging Face Hub.",
                "kitrec-fast push runs/dualft_music_seta-unsloth --repo you/kitrec-dualft-music-seta --private",
                description="Upload the run's adapter, model card, resolved config and metrics to the Hugging "
                            "Face Hub (log in first: hf auth login, or HF_TOKEN).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a finished training (with adapter/)")
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. you/kitrec-dualft-music-seta")
    p.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    p.set_defaults(func=_push)


def _export(args) -> int:
    from kitrec_fast.artifacts.export import export_merged
    from kitrec_fast.console import make_console

    check_writable(args.out, "--merged-16bit")
    console = make_console()
    try:
        out = export_merged(args.run_dir, args.out, dtype=args.dtype, base_model=args.base_model)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    console.print(f"[green]merged[/] model written to {out}")
    return 0


def _push(args) -> int:
    from kitrec_fast.artifacts.push import push_run
    from kitrec_fast.console import make_console

    console = make_console()
    try:
        url = push_run(args.run_dir, args.repo, private=args.private)
    except (FileNotFoundError, PermissionError, ValueError) as exc:  # no adapter, no token, a smoke run
        raise UserError(str(exc)) from exc
    console.print(f"[green]pushed[/] {url}")
    return 0
