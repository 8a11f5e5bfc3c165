"""Live progress of a job read from what its processes write (metrics.jsonl, checkpoints,
predictions.jsonl), and the table that shows it."""

from __future__ import annotations

import json
import time
from pathlib import Path

TAIL_BYTES = 64 * 1024


def _tail_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - TAIL_BYTES))
        data = fh.read().decode("utf-8", "replace")
    rows = []
    for line in data.splitlines()[1 if size > TAIL_BYTES else 0:]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows


def _total_steps(run_dir: Path) -> int | None:
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(states):
        try:
            return int(json.loads(path.read_text())["max_steps"])
        except (ValueError, KeyError, OSError):
            continue
    return None


def train_progress(run_dir: Path, since: float | None) -> dict:
    """step, total, loss and ETA (from this attempt's step rate) of a training run."""
    rows = [r for r in _tail_rows(Path(run_dir) / "metrics.jsonl") if "loss" in r and "step" in r]
    out = {"step": None, "total": _total_steps(Path(run_dir)), "loss": None, "eta_s": None}
    if not rows:
        return out
    last = rows[-1]
    out.update(step=int(last["step"]), loss=float(last["loss"]))
    mine = [r for r in rows if since is None or r.get("time", 0) >= since]
    if out["total"] and len(mine) >= 2 and mine[-1]["step"] > mine[0]["step"]:
        rate = (mine[-1]["time"] - mine[0]["time"]) / (mine[-1]["step"] - mine[0]["step"])
        out["eta_s"] = max(0.0, rate * (out["total"] - out["step"]))
    return out


def _selected_rows(eval_dir: Path) -> int | None:
    """Rows the running ``eval generate`` selected (its generate_config.json), if it wrote it yet."""
    try:
        return int(json.loads((Path(eval_dir) / "generate_config.json").read_text())["rows"]["selected"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate_progress(eval_dir: Path, total: int | None = None) -> dict:
    """Rows written, their total (``total``, else what the running command selected) and an ETA
    from the recent rows' generation time per row."""
    path = Path(eval_dir) / "predictions.jsonl"
    rows = sum(1 for line in path.open("rb") if line.strip()) if path.is_file() else 0
    total = total or _selected_rows(Path(eval_dir))
    recent = [r for r in _tail_rows(path) if isinstance(r.get("gen_seconds"), (int, float))]
    eta = None
    if total and recent:
        per_row = sum(r["gen_seconds"] / max(int(r.get("batch_size") or 1), 1) for r in recent) / len(recent)
        eta = per_row * max(total - rows, 0)
    return {"step": rows, "total": total, "loss": None, "eta_s": eta}


def _fmt_eta(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def jobs_table(state: dict, title: str = "kitrec-fast grid"):
    from rich.table import Table

    table = Table(title=title)
    for col in ("job", "state", "attempt", "step/total", "loss", "ETA", "node"):
        table.add_column(col, justify="right" if col in ("attempt", "step/total", "loss", "ETA") else "left")
    colors = {"done": "green", "failed": "red", "pending": "dim", "queued": "dim", "trained": "dim"}
    for job_id, r in state["jobs"].items():
        st = r["state"]
        shown = st
        if st == "trained":  # its step/total is the finished training's; what it waits for is said here
            waiting = r.get("waiting_for") or []
            shown = (f"trained; evaluation waits for {', '.join(waiting)} to train" if waiting
                     else "trained; evaluation next")
        attempt = r["attempts"].get(st) if st in r["attempts"] else None
        if r["step"] is None:
            steps = "-"
        elif st == "generate":
            steps = f"{r['step']}/{r['total'] or '?'} rows"
        else:
            steps = f"{r['step']}/{r['total'] or '?'}"
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        table.add_row(job_id, f"[{colors.get(st, 'cyan')}]{shown}[/]", str(attempt or "-"), steps, loss,
                      _fmt_eta(r["eta_s"]), r.get("node") or "-")
    updated = state.get("updated")
    if updated:
        table.caption = f"state of {time.strftime('%H:%M:%S', time.localtime(updated))}"
    return table
