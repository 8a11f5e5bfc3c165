"""``kitrec-fast grid`` on a real local Ray cluster (2 CPUs): a 2-job smoke grid with evaluation
survives a training worker SIGKILLed in the middle of a checkpoint save (its node dies mid-save),
and bad input is refused before any job starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from kitrec_fast.grid.cli import build_parser, make_spec, split_overrides  # noqa: E402
from kitrec_fast.grid.spec import eval_user_types  # noqa: E402

JOB_A = "singleft_music_seta-peft"
JOB_B = "singleft_music_setb-peft"
MAX_STEPS = 4
LIMIT_PER_TYPE = 2
# Tiny rows, short prompts and one row per step keep each CPU training process small; the
# overrides sit between the options on purpose (they must never be taken as sets or backends).
GRID_ARGS = ["singleft_music", "--sets", "A", "B", "data.limit=12", "--backends", "peft", "--smoke",
             "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=5",
             "train.per_device_batch_size=1", f"train.max_steps={MAX_STEPS}",
             "--eval-limit-per-type", str(LIMIT_PER_TYPE), "--eval-max-new-tokens", "8"]
# Clusters started by ray.init turn on token authentication; drivers joining them must use it too.
RAY_ENV = {"RAY_AUTH_MODE": "token"}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **RAY_ENV, **extra}


def _grid(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kitrec_fast", "grid", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _stale_ray_temp_dir() -> tuple[Path, str]:
    """A Ray temp folder of this module's own (short: Ray's socket paths must stay under ~100
    characters) holding what a killed ``ray start --head`` leaves behind: ``ray_current_cluster``
    naming a head that no longer answers. Returns the folder (RAY_TMPDIR) and the dead address."""
    root = Path(tempfile.mkdtemp(prefix="kr-", dir=os.environ.get("TMPDIR", "/tmp")))
    dead = f"127.0.0.1:{_free_port()}"
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(dead)
    return root, dead


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the module, held by a small driver process that shuts it
    down when its stdin closes (only processes this fixture started are stopped). It starts in a Ray
    temp folder of its own that holds a stale address file, as a machine where a `ray start` head
    was killed has one: address="local" must start a new cluster instead of joining the dead head."""
    temp, dead = _stale_ray_temp_dir()
    code = ("import sys, ray\n"
            "ctx = ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
            "print(ctx.address_info['gcs_address'], flush=True)\n"
            "sys.stdin.read()\n"
            "ray.shutdown()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=_env(RAY_TMPDIR=str(temp)))
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray holder process did not start a cluster"
        yield {"address": address, "stale": dead, "temp_dir": temp}
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_address(ray_cluster):
    return ray_cluster["address"]


def test_the_test_cluster_is_its_own_beside_a_stale_address_file(ray_cluster):
    # the holder read its temp folder, found the dead head's address there and started a cluster anyway
    assert (ray_cluster["temp_dir"] / "ray" / "ray_current_cluster").is_file()
    assert ray_cluster["address"] != ray_cluster["stale"]
    assert any(p.name.startswith("session_") for p in (ray_cluster["temp_dir"] / "ray").iterdir())
    host, port = ray_cluster["address"].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=10).close()


def _read_state(out: Path) -> dict | None:
    try:
        return json.loads((out / "grid_state.json").read_text())
    except (OSError, ValueError):
        return None


def _checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoint-*/trainer_state.json"))


def _proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, T stopped, Z zombie...); None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((line.split()[1] for line in fh if line.startswith("State:")), None)
    except FileNotFoundError:
        return None


def _gone(pid: int) -> bool:
    return _proc_state(pid) in (None, "Z")


def _stopped(pid: int) -> bool:
    return _proc_state(pid) == "T"


@pytest.fixture(scope="module")
def killed_grid(ray_address, tmp_path_factory):
    """Run the grid with a fault that freezes the first training process to reach its second save
    (checkpoint-4 staged, nothing synced or renamed yet; kitrec_fast/faults.py), then SIGKILL the Ray
    worker that runs it: a node dying mid-save. Returns what the tests below check."""
    out = tmp_path_factory.mktemp("grid")
    args = GRID_ARGS + ["--output", str(out), "--address", ray_address]
    fault = f"stop:save=2,once={out / 'fault.fired'}"
    proc = subprocess.Popen([sys.executable, "-m", "kitrec_fast", "grid", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(KITREC_FAST_FAULT=fault))
    child = None
    try:
        deadline = time.time() + 480  # the second save of a job: two steps later than the first
        victim = None
        while victim is None:
            assert proc.poll() is None, f"grid ended before the kill:\n{proc.stdout.read()}"
            assert time.time() < deadline, "no training process reached its second save"
            for job, rec in ((_read_state(out) or {}).get("jobs") or {}).items():
                if rec.get("state") == "train" and rec.get("pids") and _stopped(rec["pids"]["process"]):
                    victim = job
                    child, worker = rec["pids"]["process"], rec["pids"]["worker"]
            time.sleep(0.05)
        run = out / "runs" / victim
        staged = sorted(p.name for p in (run / ".staging").iterdir()) if (run / ".staging").is_dir() else []
        killed_at = max(_checkpoints(run))
        os.kill(worker, signal.SIGKILL)
        for _ in range(300):  # the kernel's SIGKILL is at once; tearing down a torch process can take a while
            if _gone(child):
                break
            time.sleep(0.1)
        orphan = not _gone(child)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
    other = JOB_B if victim == JOB_A else JOB_A
    return {"out": out, "args": args, "rc": proc.returncode, "output": output, "killed_at": killed_at,
            "orphan": orphan, "victim": victim, "other": other, "staged_at_kill": staged}


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes_from_checkpoint(killed_grid):
    out, output = killed_grid["out"], killed_grid["output"]
    assert killed_grid["rc"] == 0, output
    assert not killed_grid["orphan"], "the training process outlived its killed Ray worker"
    state = _read_state(out)
    assert state["finished"] is True
    victim, other = killed_grid["victim"], killed_grid["other"]
    a, b = state["jobs"][victim], state["jobs"][other]
    assert (a["state"], b["state"]) == ("done", "done")
    assert a["attempts"]["train"] == 2 and b["attempts"]["train"] == 1
    assert "retrying" in output
    # killed mid-save: checkpoint-4 was staged, not yet in place; the retry is the same command,
    # resumed from the last complete checkpoint, and drops the unfinished save
    assert killed_grid["staged_at_kill"] == ["checkpoint-4"] and killed_grid["killed_at"] == 2
    second = (out / "logs" / victim / "train.2.log").read_text()
    assert "resuming from" in second and f"checkpoint-{killed_grid['killed_at']}" in second
    assert "unfinished save (.staging/checkpoint-4)" in second
    for job in (JOB_A, JOB_B):
        assert not (out / "runs" / job / ".staging").exists() and not (out / "runs" / job / "broken").exists()
    for job in (JOB_A, JOB_B):
        rows = [json.loads(x) for x in (out / "runs" / job / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = [r["step"] for r in rows if "loss" in r and "eval_loss" not in r]
        assert steps == list(range(1, MAX_STEPS + 1)), f"{job}: training steps logged {steps}"
        assert json.loads((out / "runs" / job / "summary.json").read_text())["global_step"] == MAX_STEPS


@pytest.mark.slow
def test_each_prediction_row_once_and_report_lists_both_jobs(killed_grid):
    out = killed_grid["out"]
    for job in (JOB_A, JOB_B):
        preds = [json.loads(x) for x in (out / "eval" / job / "predictions.jsonl").read_text().splitlines()
                 if x.strip()]
        ids = [p["row_id"] for p in preds]
        assert len(ids) == len(set(ids)) == LIMIT_PER_TYPE
        assert {p["user_type"] for p in preds} == {"source_only_music"}
        assert (out / "eval" / job / "score" / "report.json").is_file()
    report = json.loads((out / "grid_report.json").read_text())
    entries = {e["job"]: e for e in report["jobs"]}
    assert set(entries) == {JOB_A, JOB_B}
    for job, e in entries.items():
        summary = json.loads((out / "runs" / job / "summary.json").read_text())
        score = json.loads((out / "eval" / job / "score" / "report.json").read_text())
        assert (e["recipe"], e["backend"], e["state"]) == (job.rsplit("-", 1)[0], "peft", "done")
        assert e["run_dir"] == str(out / "runs" / job)
        assert e["eval_loss"] == summary["best_eval_loss"]
        assert e["eval_rows"] == LIMIT_PER_TYPE
        for k in ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10"):
            assert e["metrics"][k] == score["overall"]["metrics"][k]
            assert 0.0 <= e["metrics"][k] <= 1.0
        assert e["peak_memory_mib"] > 0 and e["train_wall_seconds"] > 0
    md = (out / "grid_report.md").read_text()
    assert JOB_A in md and JOB_B in md
    assert (out / "grid_report.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_of_finished_grid_does_nothing(killed_grid):
    out = killed_grid["out"]
    assert killed_grid["rc"] == 0
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    logs = sorted(p.name for p in (out / "logs").rglob("*.log"))
    result = _grid(killed_grid["args"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished" in result.stdout and "nothing to do" in result.stdout
    assert sorted(p.name for p in (out / "logs").rglob("*.log")) == logs
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == before


def test_status_reads_the_state_file(killed_grid):
    result = _grid(["--status", "--output", str(killed_grid["out"])])
    assert result.returncode == 0, result.stderr
    assert JOB_A in result.stdout and "done" in result.stdout


# -- command line and bad input -----------------------------------------------------------------

def test_overrides_are_never_swallowed_by_list_options():
    parser = build_parser()
    argv = ["--sets", "a", "B", "train.max_steps=3", "singleft_music", "--backends", "peft", "unsloth",
            "data.limit=5", "--output", "out=1", "dualft_movies_setb"]
    rest, overrides = split_overrides(argv, parser)
    args = parser.parse_intermixed_args(rest)
    spec = make_spec(args, overrides)
    assert overrides == ["train.max_steps=3", "data.limit=5"]
    assert spec.sets == ("A", "B") and spec.backends == ("peft", "unsloth")
    assert spec.output.name == "out=1"
    assert [j.id for j in spec.jobs()] == [
        "singleft_music_seta-peft", "singleft_music_seta-unsloth", "singleft_music_setb-peft",
        "singleft_music_setb-unsloth", "dualft_movies_setb-peft", "dualft_movies_setb-unsloth"]


def test_each_model_is_evaluated_on_the_user_types_of_its_domain():
    # SPEC: DualFT = overlapping + cold-start 2/3/4-core of the target domain; SingleFT = source-only
    assert eval_user_types("dualft_music") == ["overlapping_books_music", "cold_start_2core_music",
                                               "cold_start_3core_music", "cold_start_4core_music"]
    assert eval_user_types("dualft_movies") == ["overlapping_books_movies", "cold_start_2core_movies",
                                                "cold_start_3core_movies", "cold_start_4core_movies"]
    assert eval_user_types("singleft_music") == ["source_only_music"]
    assert eval_user_types("singleft_movies") == ["source_only_movies"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["dualft_musik", "--smoke"], "unknown recipe 'dualft_musik'"),
    (["--sets", "A", "C", "--smoke"], "--sets: unknown set 'C'"),
    (["singleft_music", "--sets", "A", "--smoke", "--backends", "peft", "train.bogus_key=1"], "train.bogus_key"),
    (["singleft_music", "--sets", "A", "--smoke", "--backends", "peft", "--address", "PORT"], "no Ray cluster answers"),
])
def test_bad_input_is_refused_before_any_job(tmp_path, args, message):
    out = tmp_path / "grid"
    args = [f"127.0.0.1:{_free_port()}" if a == "PORT" else a for a in args]
    result = _grid(args + ["--output", str(out)], timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (out / "grid_state.json").exists() and not (out / "runs").exists()


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine's cluster has a GPU")
def test_gpu_grid_on_a_cluster_without_gpus_is_refused(tmp_path):
    # no --address: the grid starts its own local cluster, which has no GPU on this machine
    out = tmp_path / "grid"
    result = _grid(["singleft_music", "--sets", "A", "--backends", "peft", "--output", str(out)], timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has no GPUs" in result.stderr and "--smoke" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (out / "runs").exists()


def test_rerun_with_other_settings_into_the_same_output_is_refused(tmp_path):
    from kitrec_fast.grid.spec import GridError, GridSpec
    from kitrec_fast.grid.state import merge_state, read_state, write_state

    first = GridSpec(output=tmp_path, families=("singleft_music",), sets=("A",), smoke=True,
                     overrides=("train.max_steps=4",))
    write_state(tmp_path, merge_state(first, None, "first"))
    # more jobs with the same settings join the grid
    more = GridSpec(output=tmp_path, families=("singleft_music",), sets=("A", "B"), smoke=True,
                    overrides=("train.max_steps=4",))
    assert set(merge_state(more, read_state(tmp_path), "more")["jobs"]) == {
        "singleft_music_seta-unsloth", "singleft_music_setb-unsloth"}
    changed = GridSpec(output=tmp_path, families=("singleft_music",), sets=("A",), smoke=True,
                       overrides=("train.max_steps=8",))
    with pytest.raises(GridError, match=r"overrides: \['train.max_steps=4'\] there, \['train.max_steps=8'\] now"):
        merge_state(changed, read_state(tmp_path), "changed")


# -- smoke sizes, progress of generation, the report's figure ------------------------------------

def test_smoke_grid_evaluates_a_few_short_rows_per_type(tmp_path):
    from kitrec_fast.grid.spec import GridSpec

    spec = GridSpec(output=tmp_path, families=("dualft_music",), sets=("A",), backends=("peft",), smoke=True)
    (job,) = spec.jobs()
    (cmd,) = job.generate_commands()  # one process, one model load, for every user type
    opts = dict(zip(cmd, cmd[1:]))
    assert opts["--limit-per-type"] == "2" and opts["--max-new-tokens"] == "32" and opts["--max-candidates"] == "20"
    types = cmd[cmd.index("--user-type") + 1: cmd.index("--limit-per-type")]
    assert types == ["overlapping_books_music", "cold_start_2core_music", "cold_start_3core_music",
                     "cold_start_4core_music"]
    assert job.eval_rows_expected == 8
    # the rows that command selects from the embedded test set: 2 of each type, 8 in all
    from kitrec_fast.data.load import load_raw
    from kitrec_fast.data.schema import row_user_type
    from kitrec_fast.eval.generate import select_rows

    raw = load_raw(opts["--dataset"], "test")
    picked = [row_user_type(raw[i]) for i in select_rows(raw, types, None, 2)]
    assert sorted(picked) == sorted(types * 2)
    assert spec.settings()["eval_limit_per_type"] == 2 and spec.settings()["eval_max_new_tokens"] == 32
    # given sizes win; a real grid keeps eval generate's own (every row, 2,048 tokens, all candidates)
    mine = GridSpec(output=tmp_path, families=("dualft_music",), smoke=True, eval_limit_per_type=5,
                    eval_max_new_tokens=8)
    assert mine.eval_limit_per_type == 5 and mine.eval_max_new_tokens == 8
    real = GridSpec(output=tmp_path, families=("dualft_music",), sets=("A",))
    (cmd,) = real.jobs()[0].generate_commands()
    assert "--limit" not in cmd and "--max-new-tokens" not in cmd and "--max-candidates" not in cmd
    assert real.jobs()[0].eval_rows_expected is None


def test_status_shows_generation_rows_of_their_total_with_an_eta(tmp_path):
    from rich.console import Console

    from kitrec_fast.grid.progress import generate_progress, jobs_table
    from kitrec_fast.grid.state import new_job_record
    from kitrec_fast.grid.spec import GridSpec

    spec = GridSpec(output=tmp_path, families=("singleft_music",), sets=("A",), backends=("peft",), smoke=True)
    (job,) = spec.jobs()
    job.eval_dir.mkdir(parents=True)
    # 3 rows written in batches of 1 and 2, at 4 s per row: 2 rows of 5 (limit 5 x 1 type) to go
    rows = [{"row_id": 0, "gen_seconds": 4.0, "batch_size": 1},
            {"row_id": 1, "gen_seconds": 8.0, "batch_size": 2}, {"row_id": 2, "gen_seconds": 8.0, "batch_size": 2}]
    (job.eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    progress = generate_progress(job.eval_dir, total=5)
    assert progress["step"] == 3 and progress["total"] == 5 and progress["eta_s"] == pytest.approx(8.0)
    # without a known total, the running command's own selection (its generate_config.json)
    (job.eval_dir / "generate_config.json").write_text(json.dumps({"rows": {"selected": 7}}))
    assert generate_progress(job.eval_dir)["total"] == 7
    record = {**new_job_record(job), "state": "generate", "attempts": {"generate": 1}, **progress}
    console = Console(record=True, width=120)
    console.print(jobs_table({"jobs": {job.id: record}}))
    text = console.export_text()
    assert "3/5 rows" in text and "0:00:08" in text


def test_report_figure_says_when_every_metric_is_zero():
    from kitrec_fast.grid.report import METRICS, figure

    def entry(job, value, rows):
        return {"job": job, "metrics": dict.fromkeys(METRICS, value), "eval_loss": 11.9, "eval_rows": rows}

    def words(fig):
        return [t.get_text() for ax in fig.axes for t in ax.texts]

    assert words(figure([entry("a", 0.0, 8), entry("b", 0.0, 8)])) == ["every metric is 0 for every job"]
    assert words(figure([entry("a", None, None)])) == ["no job has a score yet"]
    assert words(figure([entry("a", 0.0, 8), entry("b", 0.25, 8)])) == []


# -- what a grid says before and between its jobs -------------------------------------------------

def test_a_starting_grid_says_so_at_once_and_in_status(tmp_path):
    # validating the jobs' options (a recipe --dry-run each) and starting Ray take a minute or two
    # on 2 cores: the grid says what it is doing at once, and --status in another terminal says it
    # starts. train.bogus_key makes the start end at the option check, before Ray.
    out = tmp_path / "grid"
    proc = subprocess.Popen([sys.executable, "-m", "kitrec_fast", "grid", "singleft_music", "--sets", "A", "--smoke",
                             "--backends", "peft", "train.bogus_key=1", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        first = proc.stdout.readline()
        assert "checking the options of 1 job(s)" in first, first + proc.stderr.read()
        os.kill(proc.pid, signal.SIGSTOP)  # held in its start while --status reads
        status = _grid(["--status", "--output", str(out)])
        assert status.returncode == 0, status.stdout + status.stderr
        assert "grid starting" in status.stdout and "checking the options" in status.stdout
        assert f"pid {proc.pid}" in status.stdout
        assert "pending" in status.stdout and "singleft_music_seta-peft" in status.stdout
        # killed during its start: --status says it stopped, not that it is still starting
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        status = _grid(["--status", "--output", str(out)])
        assert "stopped before its first job" in status.stdout and "grid starting" not in status.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_trained_job_waiting_for_its_groups_evaluation_is_shown_as_such(killed_grid, tmp_path):
    # Two backends of one recipe and set are evaluated together (one engine): the job that finished
    # training first waits for the other's training before its evaluation starts.
    from rich.console import Console

    from kitrec_fast.grid.progress import jobs_table
    from kitrec_fast.grid.runner import GridRunner
    from kitrec_fast.grid.spec import GridSpec
    from kitrec_fast.grid.state import merge_state

    spec = GridSpec(output=tmp_path, families=("singleft_music",), sets=("A",), backends=("peft", "unsloth"),
                    smoke=True)
    trained, training = "singleft_music_seta-peft", "singleft_music_seta-unsloth"
    shutil.copytree(killed_grid["out"] / "runs" / trained, tmp_path / "runs" / trained)  # a finished training
    runner = GridRunner(spec, merge_state(spec, None, "test"), Console())
    runner._submit(trained)
    record = runner.state["jobs"][trained]
    assert record["state"] == "trained" and record["waiting_for"] == [training]
    assert not runner.running  # no evaluation was started for half of its group
    console = Console(record=True, width=200)
    console.print(jobs_table(runner.state))
    row = next(line for line in console.export_text().splitlines() if trained in line)
    assert f"trained; evaluation waits for {training} to train" in row and f"{MAX_STEPS}/{MAX_STEPS}" in row
    assert "queued" not in row
