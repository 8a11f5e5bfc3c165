"""The grid's scheduling loop: each job's stages as Ray tasks, bounded retries, live progress.

A stage is retried when its worker died (Ray reports the task lost: node loss, preemption, an
OOM kill of the worker) or its process was killed by a signal; the retry reruns the same
command, which resumes (training from its newest checkpoint, generation after the rows already
written). A stage that exits with an error of its own (bad data, a refused config) is not
retried: the same command would fail the same way. A full disk (exit 74) is not retried either:
the retry would fill the same disk; it is reported as such, and once space is freed a rerun of
the grid resumes from the intact checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kitrec_fast.errors import DiskFullError
from kitrec_fast.grid.progress import generate_progress, jobs_table, train_progress
from kitrec_fast.grid.spec import STAGES, GridSpec, Job
from kitrec_fast.grid.state import write_state

# Forwarded to every job process: on a joined cluster the workers do not inherit this shell's.
ENV_PREFIXES = ("HF_", "KITREC_FAST_", "UNSLOTH_", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_", "WANDB_")
POLL_S = 1.0
LOG_TAIL_LINES = 15


# A retried stage may start while the killed one's lock on its run directory still counts as held:
# on NFS until the server drops the dead client's lock, elsewhere until its heartbeat is stale
# (kitrec_fast/dirlock.py). Its jobs wait that long for their folders instead of failing.
JOB_LOCK_WAIT_S = 300


def forwarded_env() -> dict[str, str]:
    from kitrec_fast.dirlock import WAIT_ENV

    return {WAIT_ENV: str(JOB_LOCK_WAIT_S), **{k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}}


def train_finished(run_dir: Path) -> bool:
    """The run directory's own mark of a finished run: summary.json (not interrupted) and the adapter."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file() or not (Path(run_dir) / "adapter" / "adapter_config.json").is_file():
        return False
    try:
        return not json.loads(summary.read_text()).get("interrupted")
    except ValueError:
        return False


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


class GridRunner:
    def __init__(self, spec: GridSpec, state: dict, console):
        self.spec, self.state, self.console = spec, state, console
        self.jobs = {j.id: j for j in spec.jobs()}
        # Jobs evaluated together (same test set and user types): one `eval generate`, one engine.
        groups: dict = {}
        for j in spec.jobs():
            groups.setdefault(j.eval_group, []).append(j.id)
        self.groups = {job_id: ids for ids in groups.values() for job_id in ids}
        self.running: dict = {}  # ObjectRef -> (job ids, stage, attempt, proc file, start time)
        self.env = forwarded_env()

    # -- stage bookkeeping -------------------------------------------------------------------
    def _record(self, job_id: str) -> dict:
        return self.state["jobs"][job_id]

    def _next_stage(self, job_id: str) -> str | None:
        record = self._record(job_id)
        for stage in STAGES:
            if stage not in record["stages_done"]:
                if stage == "train" and train_finished(self.jobs[job_id].run_dir):
                    record["stages_done"].append("train")  # finished before this state file knew it
                    continue
                return stage
        return None

    def _resources(self, stage: str) -> dict:
        if stage == "score" or self.spec.smoke:
            return {"num_cpus": 1, "num_gpus": 0}
        return {"num_cpus": 1, "num_gpus": 1}

    def _generate_group(self, job_id: str) -> list[str] | None:
        """The jobs to generate with ``job_id`` now, or None while one of them still trains (or
        the group's generation already runs). Failed jobs and finished generations are left out."""
        members = [m for m in self.groups[job_id] if self._record(m)["state"] != "failed"
                   and "generate" not in self._record(m)["stages_done"]]
        busy = {m for ids, *_ in self.running.values() for m in ids}
        if any(m in busy or self._next_stage(m) != "generate" for m in members):
            return None
        return members

    def _kick_group(self, job_id: str) -> None:
        """A group member finished or failed: start the group's generation if it was waiting for it."""
        for m in self.groups[job_id]:
            if m != job_id and self._record(m)["state"] == "trained" and self._generate_group(m):
                self._submit(m)
                return

    def _submit(self, job_id: str) -> None:
        import ray

        from kitrec_fast.grid.worker import run_commands

        job: Job = self.jobs[job_id]
        record = self._record(job_id)
        stage = self._next_stage(job_id)
        if stage is None:
            # the table's last word on a finished job is its training: final step and loss
            final = train_progress(job.run_dir, since=None)
            record.update(state="done", eta_s=None, step=final["step"], total=final["total"] or final["step"],
                          loss=final["loss"], pids={})
            return
        job_ids = [job_id]
        commands = job.commands(stage)
        if stage == "generate":
            group = self._generate_group(job_id)
            if group is None:  # trained; its evaluation waits for the rest of its group's training
                waiting = [m for m in self.groups[job_id] if m != job_id and self._record(m)["state"] != "failed"
                           and self._next_stage(m) == "train"]
                final = train_progress(job.run_dir, since=None)
                record.update(state="trained", pids={}, eta_s=None, waiting_for=waiting, step=final["step"],
                              total=final["total"] or final["step"], loss=final["loss"])
                return
            job_ids = group
            commands = self.jobs[group[0]].generate_commands([self.jobs[m] for m in group])
            job = self.jobs[group[0]]
        attempt = record["attempts"].get(stage, 0) + 1
        log = job.log_path(stage, attempt)
        proc = log.with_suffix(".proc.json")
        proc.unlink(missing_ok=True)
        task = ray.remote(run_commands).options(max_retries=0, **self._resources(stage))
        ref = task.remote(commands, str(log), str(proc), self.env)
        self.running[ref] = (tuple(job_ids), stage, attempt, proc, time.time())
        for m in job_ids:
            self._record(m)["attempts"][stage] = attempt
            self._record(m).update(state="queued", log=str(log), pids={}, eta_s=None, waiting_for=[])

    # -- outcome of a stage ------------------------------------------------------------------
    def _finish(self, ref) -> None:
        import ray

        job_ids, stage, attempt, proc, started = self.running.pop(ref)
        job_id = job_ids[0]
        log = Path(self._record(job_id)["log"])
        try:
            result = ray.get(ref)
            rc, why, seconds = result["rc"], f"exit status {result['rc']}", result["seconds"]
        except ray.exceptions.RayTaskError as exc:  # the task itself raised (e.g. the command cannot start)
            rc, why, seconds = None, f"task error on its node: {str(exc.cause)[:300]}", time.time() - started
        except ray.exceptions.RayError as exc:  # the worker or its node died
            rc, why, seconds = None, f"worker lost ({type(exc).__name__})", time.time() - started
        for m in job_ids:
            done = self._record(m)["stage_seconds"]
            done[stage] = round(done.get(stage, 0) + seconds, 1)
        if rc == 0:
            for m in job_ids:
                self._record(m)["stages_done"].append(stage)
                self._say(f"[green]{m}[/] {stage} done")
                self._submit(m)
            return
        retryable = rc is None or rc < 0
        if retryable and attempt <= self.spec.max_retries:
            self._say(f"[yellow]{', '.join(job_ids)}[/] {stage} attempt {attempt} failed: {why}; retrying "
                      f"({attempt}/{self.spec.max_retries} retries), resuming where it stopped")
            self._submit(job_id)
            return
        reason = why if retryable else f"{why}, not retried (the same command would fail again)"
        if rc == DiskFullError.exit_code:
            reason = f"{why}: disk full, not retried; free space, then rerun the grid to resume"
        for m in job_ids:
            self._record(m).update(state="failed", eta_s=None,
                                   error=f"{stage} failed after {attempt} attempt(s): {reason}; log {log}")
        self._say(f"[red]{', '.join(job_ids)}[/] {self._record(job_id)['error']}\n{log_tail(log)}")
        for m in job_ids:
            self._kick_group(m)  # the group's other jobs no longer wait for this one

    def _say(self, text: str) -> None:
        self.console.print(text)

    # -- progress ----------------------------------------------------------------------------
    def _poll_progress(self) -> None:
        for job_ids, stage, _, proc, started in self.running.values():
            info = None
            if proc.is_file():
                try:
                    info = json.loads(proc.read_text())
                except ValueError:
                    info = None
            for job_id in job_ids:
                record = self._record(job_id)
                if info:
                    record.update(state=stage, node=info["node"],
                                  pids={"worker": info["worker_pid"], "process": info["pid"]})
                if record["state"] == "train":
                    record.update(train_progress(self.jobs[job_id].run_dir, since=started))
                elif record["state"] == "generate":
                    job = self.jobs[job_id]
                    record.update(generate_progress(job.eval_dir, job.eval_rows_expected))

    def run(self) -> dict:
        """Run every job to done or failed; returns the final state."""
        import ray
        from rich.live import Live

        for job_id in self.jobs:
            if self._record(job_id)["state"] != "done":
                self._submit(job_id)
        write_state(self.spec.output, self.state)
        with Live(jobs_table(self.state), console=self.console, refresh_per_second=1,
                  auto_refresh=False) as live:
            while self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self._finish(ref)
                self._poll_progress()
                write_state(self.spec.output, self.state)
                live.update(jobs_table(self.state), refresh=True)
        self.console.print()
        self.state["finished"] = all(r["state"] == "done" for r in self.state["jobs"].values())
        write_state(self.spec.output, self.state)
        return self.state
