"""Upload a run's adapter and its records to the Hugging Face Hub.

The token comes from ``HF_TOKEN`` or the local ``huggingface-cli login``; it is passed to the
client only and never printed or written to any file.
"""

from __future__ import annotations

import os
from pathlib import Path

from kitrec_fast.artifacts import rundir

# What a reader of the Hub repo needs to use and judge the adapter; checkpoints stay local.
RUN_FILES = (rundir.RESOLVED_CONFIG, rundir.ENVIRONMENT, rundir.METRICS, "summary.json", "data_report.json",
             "loss_curves.png")


def files_to_push(run_dir: str | Path) -> dict[str, Path]:
    """Repo path -> local file: the adapter folder's files at the root, run records under run/."""
    run_dir = Path(run_dir)
    adapter = run_dir / rundir.ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json (is {run_dir} a finished run?)")
    files = {p.name: p for p in sorted(adapter.iterdir()) if p.is_file()}
    files.update({f"run/{name}": run_dir / name for name in RUN_FILES if (run_dir / name).is_file()})
    return files


def resolve_token() -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` first")
    return token


def push_run(run_dir: str | Path, repo: str, private: bool = False) -> str:
    """Create ``repo`` if needed and upload the adapter + run records; returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    files = files_to_push(run_dir)
    if (run_dir / rundir.RESOLVED_CONFIG).is_file() and rundir.read_resolved_config(run_dir).smoke:
        raise ValueError(f"{run_dir} is a smoke run (tiny random model, synthetic data); not pushing it")
    api = HfApi(token=resolve_token())
    url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    ops = [CommitOperationAdd(path_in_repo=dst, path_or_fileobj=str(src)) for dst, src in files.items()
           if dst != "README.md"]
    if "README.md" in files:
        # The card's usage snippet names the local adapter folder; on the Hub it is the repo itself.
        card = files["README.md"].read_text().replace(str(run_dir / rundir.ADAPTER_DIR), repo)
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api.create_commit(repo_id=repo, operations=ops, commit_message=f"kitrec_fast: upload {Path(run_dir).name}")
    return str(url)
