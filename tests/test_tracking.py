"""Experiment tracking (``train.report_to``): one real smoke run reports to TensorBoard, MLflow and
W&B (offline) at once, and each tracker's own files are read back with that tracker's reader."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kitrec_fast.config import ConfigError, apply_overrides, config_from_dict
from kitrec_fast.recipes import list_recipes, load_recipe

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.limit=16", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3"]
# 4 steps, warmup ceil(0.25 * 4) = 1 step (the rate 0 at step 1), cosine over steps 2-4, evaluations at 2 and 4.
PEAK_LR, STEPS, WARMUP_RATIO = 1e-3, 4, 0.25
RUN_ARGS = [*FAST, "data.val_fraction=0.25", f"train.max_steps={STEPS}", "train.eval_steps=2",
            "train.save_steps=4", f"train.learning_rate={PEAK_LR}", f"train.warmup_ratio={WARMUP_RATIO}",
            "train.early_stopping_patience=0", "train.report_to=tensorboard,mlflow,wandb"]
TRACKER_ENV = ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR",
               "WANDB_PROJECT", "WANDB_MODE", "TRACKIO_DIR")


def cosine_with_warmup(step: int) -> float:
    """The learning rate logged at optimizer step ``step`` (1-based): the rate that step used,
    i.e. the schedule at index step - 1. Linear warmup over W = ceil(ratio * T) steps, then cosine."""
    total, warmup, s = STEPS, math.ceil(WARMUP_RATIO * STEPS), step - 1
    if s < warmup:
        return PEAK_LR * s / warmup
    return PEAK_LR * 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / (total - warmup)))


def _cfg(**train):
    raw = load_recipe("dualft_music_seta")
    return config_from_dict(apply_overrides(raw, {f"train.{k}": v for k, v in train.items()}))


def test_report_to_accepts_names_lists_and_comma_separated():
    for name in list_recipes():
        assert config_from_dict(load_recipe(name)).train.report_to == ["none"], name
    assert _cfg(report_to="tensorboard,mlflow").train.report_to == ["tensorboard", "mlflow"]
    assert _cfg(report_to="[wandb, trackio]").train.report_to == ["wandb", "trackio"]
    assert _cfg(report_to="TensorBoard").train.report_to == ["tensorboard"]
    raw = load_recipe("dualft_music_seta")
    raw["train"]["report_to"] = "mlflow"  # a recipe YAML may give one name
    assert config_from_dict(raw).train.report_to == ["mlflow"]


@pytest.mark.parametrize("value, message", [
    ("tensorbord", "unknown tracker 'tensorbord'"),
    ("mlflow,comet", "unknown tracker 'comet'"),
    ("none,wandb", "'none' cannot be combined"),
    ("[1, 2]", "must be a tracker name or a list"),
])
def test_report_to_bad_values_name_the_option(value, message):
    with pytest.raises(ConfigError, match=f"train.report_to: .*{message}"):
        _cfg(report_to=value)


def test_setup_tracking_puts_files_in_the_run_dir_unless_the_user_chose(tmp_path, monkeypatch):
    from kitrec_fast.train.tracking import setup_tracking

    for var in TRACKER_ENV:  # set, then delete: monkeypatch restores what setup_tracking sets
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    run = tmp_path / "r1"
    rec = setup_tracking(["tensorboard", "mlflow", "wandb"], run)
    assert rec["tensorboard"]["logging_dir"] == str(run / "tb") == os.environ["TENSORBOARD_LOGGING_DIR"]
    assert rec["mlflow"]["tracking_uri"] == f"sqlite:///{run / 'mlflow.db'}" == os.environ["MLFLOW_TRACKING_URI"]
    assert rec["wandb"]["dir"] == str(run / "wandb") and os.environ["WANDB_DIR"] == str(run)
    # a second run in the same process (a notebook) gets its own directories
    rec = setup_tracking(["tensorboard", "mlflow", "wandb"], tmp_path / "r1b")
    assert rec["tensorboard"]["logging_dir"] == str(tmp_path / "r1b" / "tb")
    assert rec["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'r1b' / 'mlflow.db'}"
    assert rec["wandb"]["dir"] == str(tmp_path / "r1b" / "wandb")
    assert setup_tracking(["none"], tmp_path / "r2") == {"report_to": ["none"]}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "mine"))
    rec = setup_tracking(["tensorboard", "mlflow"], tmp_path / "r3")
    assert rec["mlflow"]["tracking_uri"] == "http://mlflow.example:5000"
    assert rec["tensorboard"]["logging_dir"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_missing_tracker_is_a_clear_error_before_any_loading(tmp_path):
    import importlib.util

    if importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "peft",
                           "--output-dir", str(out), *FAST, "train.report_to=tensorboard,trackio"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "train.report_to: trackio requested but not installed" in text and "pip install trackio" in text
    assert "Traceback" not in proc.stderr
    assert not (out / "data_report.json").exists()  # stopped before data preparation and model loading


# --- one real run, three trackers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tracking") / "run"
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_ENV}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "peft",
           "--output-dir", str(run), *RUN_ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in rows if "loss" in r}
    evals = {r["step"]: r for r in rows if "eval_loss" in r}
    assert sorted(train) == list(range(1, STEPS + 1)) and sorted(evals) == [2, 4]
    return run, train, evals


def _assert_series(series: dict, expected: dict, key: str, rel: float):
    """``series`` {step: value} read from a tracker holds ``expected`` {step: row} values of ``key``."""
    assert sorted(series) == sorted(expected), key
    for step, row in expected.items():
        assert series[step] == pytest.approx(row[key], rel=rel, abs=1e-12), (key, step)


def with_throughput(train: dict) -> dict:
    """Train rows with tokens/s: every step after the first has one (tokens since the previous log)."""
    rows = {s: r for s, r in train.items() if "tokens_per_s" in r}
    assert set(rows) >= set(range(2, STEPS + 1)), sorted(rows)
    return rows


@pytest.mark.slow
def test_learning_rate_follows_the_recipe_schedule(tracked_run):
    _, train, _ = tracked_run
    for step, row in train.items():
        assert row["learning_rate"] == pytest.approx(cosine_with_warmup(step), rel=1e-9, abs=1e-15), step


@pytest.mark.slow
def test_environment_records_where_the_logs_went(tracked_run):
    run, _, _ = tracked_run
    rec = json.loads((run / "environment.json").read_text())["tracking"]
    assert rec["report_to"] == ["tensorboard", "mlflow", "wandb"]
    assert Path(rec["tensorboard"]["logging_dir"]) == run.resolve() / "tb"
    assert rec["mlflow"]["tracking_uri"] == f"sqlite:///{run.resolve() / 'mlflow.db'}"
    assert Path(rec["wandb"]["dir"]) == run.resolve() / "wandb" and rec["wandb"]["mode"] == "offline"


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_run_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, train, evals = tracked_run
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()

    def series(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    # float32 in the event file
    for tag, key in (("train/loss", "loss"), ("train/nll", "nll"), ("train/learning_rate", "learning_rate")):
        _assert_series(series(tag), train, key, rel=1e-6)
    _assert_series(series("train/tokens_per_s"), with_throughput(train), "tokens_per_s", rel=1e-6)
    _assert_series(series("eval/loss"), evals, "eval_loss", rel=1e-6)
    _assert_series(series("eval/nll"), evals, "eval_nll", rel=1e-6)
    lr = series("train/learning_rate")
    assert lr[4] == pytest.approx(cosine_with_warmup(4), rel=1e-6)  # 0.5 (1 + cos(pi/4)) * peak
    _assert_series(series("eval/peak_rss_mib"), evals, "eval_peak_rss_mib", rel=1e-6)
    assert set(series("train/peak_rss_mib")) >= set(train)


@pytest.mark.slow
def test_mlflow_sqlite_store_holds_the_run_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    run, train, evals = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kitrec_fast")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == run.name and mrun.info.status == "FINISHED"

    def series(key):
        return {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, key)}

    for key in ("loss", "nll", "learning_rate"):
        _assert_series(series(key), train, key, rel=1e-9)
    _assert_series(series("tokens_per_s"), with_throughput(train), "tokens_per_s", rel=1e-9)
    _assert_series(series("eval_loss"), evals, "eval_loss", rel=1e-9)
    _assert_series(series("eval_nll"), evals, "eval_nll", rel=1e-9)
    assert series("learning_rate")[STEPS] == pytest.approx(cosine_with_warmup(STEPS), rel=1e-9)
    assert series("peak_rss_mib") and series("eval_peak_rss_mib")
    assert float(mrun.data.params["learning_rate"]) == PEAK_LR  # the Trainer's arguments as run parameters


def read_wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``), decoded with W&B's own protobuf
    schema. The framing is LevelDB's log format after a 7-byte ``:W&B`` header: 32 KiB blocks of
    chunks, each with a 7-byte header (crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.slow
def test_wandb_offline_run_holds_history_and_final_summary(tracked_run):
    # wandb 0.31 does not write files/wandb-summary.json offline (wandb/wandb#11279): the summary
    # lives in the run's transaction log, as the updates `wandb sync` would upload.
    run, train, evals = tracked_run
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    summary, history, run_names = {}, [], []
    for record in read_wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "run":
            run_names.append(record.run.display_name)
    assert run_names == [run.name]

    def series(key):
        return {int(h["train/global_step"]): h[key] for h in history if key in h}

    for key in ("loss", "nll", "learning_rate"):
        _assert_series(series(f"train/{key}"), train, key, rel=1e-9)
    _assert_series(series("eval/loss"), evals, "eval_loss", rel=1e-9)
    _assert_series(series("eval/nll"), evals, "eval_nll", rel=1e-9)
    last = train[STEPS]
    assert summary["train/global_step"] == STEPS
    assert summary["train/learning_rate"] == pytest.approx(cosine_with_warmup(STEPS), rel=1e-9)
    assert summary["eval/loss"] == pytest.approx(evals[STEPS]["eval_loss"], rel=1e-9)
    assert summary["train/nll"] == pytest.approx(last["nll"], rel=1e-9)
    assert summary["train/tokens_per_s"] == pytest.approx(last["tokens_per_s"], rel=1e-9)
    assert summary["train_loss"] == pytest.approx(sum(r["loss"] for r in train.values()) / STEPS, rel=1e-6)
