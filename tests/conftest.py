"""Shared fixtures.

* ``qwen3_tokenizer``: the offline Qwen3 tokenizer, built once per session (~10 s the first time).
* ``hd64_run``: one short training run on the head_dim-64 tiny Qwen3 (``model.load_in_4bit=false``,
  a large learning rate so its adapter visibly changes greedy output), for the vLLM tests, which
  copy it before changing anything; made once per session like ``smoke_run``. ``hd64_4bit_run``: the
  same training on the 4-bit (nf4) base.
* ``smoke_run``: ONE finished smoke training run (peft backend, 6 steps, a checkpoint and an evaluation every 2)
  made once per session (once for all xdist workers), for every test that only reads a run directory, or copies it
  (``shutil.copytree``) before changing anything. Training a run costs ~1-2 min on 2 cores; do not
  train another one in a test that could use this one.

The suite runs on two pytest-xdist workers, a file at a time (pyproject's addopts); the files with
the most ``slow`` tests are handed out first, so that no worker starts a long file when the other
is nearly done. Each worker, and what it starts, gets its share of the cores as OpenMP threads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Under xdist the workers share the cores: each worker, and every process its tests start (they inherit
# the variable), gets its share of OpenMP threads. Left at the default, every process's pool spans all
# cores and the pools spin-wait against each other: two smoke trainings side by side on 2 cores ran at
# ~430 tokens/s each with 2 threads, ~900 with 1. A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    if "torch" in sys.modules:  # a plugin imported it first: it read the variable already
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Short prompts keep CPU steps fast while exercising the real pipeline (truncation included).
FAST = ["data.limit=16", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3"]


def pytest_collection_modifyitems(config, items):
    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    for item in items:
        slow[file_of(item)] = slow.get(file_of(item), 0) + bool(item.get_closest_marker("slow"))
    # stable: within a file, and among files with as many slow tests, the collection order holds
    items.sort(key=lambda item: -slow[file_of(item)])


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from kitrec_fast.render.tokenizer import load_tokenizer

    return load_tokenizer("offline:qwen3")


@pytest.fixture(scope="session")
def lora_run_dir(tmp_path_factory):
    """One run directory (resolved config + random LoRA adapter on the tiny Qwen3) for the eval tests that only read it."""
    from lora_runs import make_lora_run

    return make_lora_run(tmp_path_factory.mktemp("lora_run") / "run", "tests/conftest.py")


@dataclass(frozen=True)
class SmokeRun:
    run_dir: Path
    args: tuple[str, ...]  # the training command's arguments after the module, minus --output-dir

    def command(self, output_dir: Path, *extra: str) -> list[str]:
        """The same training command for another output directory (e.g. a copy of this run)."""
        return [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", *self.args, "--output-dir",
                str(output_dir), *extra]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    from filelock import FileLock

    # 12 rows, 4 of them for validation: an evaluation at every checkpoint. tests/test_reliability.py
    # kills the very same command at seeded points and compares the resumed run with this one.
    args = ("--smoke", "--backend", "peft", *FAST[1:], "data.limit=12", "data.val_fraction=0.25", "train.max_steps=6",
            "train.save_steps=2", "train.eval_steps=2", "train.gradient_accumulation_steps=1", "train.logging_steps=1")
    # One run for the whole session: xdist workers share the parent of their base temp folders, and
    # the first worker to need the run trains it while the others wait on the lock.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    run = SmokeRun(shared / "smoke-run", args)
    with FileLock(str(shared / "smoke-run.lock")):
        summary = run.run_dir / "summary.json"
        if not (summary.is_file() and json.loads(summary.read_text()).get("status") == "finished"):
            shutil.rmtree(run.run_dir, ignore_errors=True)  # a worker that failed before leaves nothing
            proc = subprocess.run(run.command(run.run_dir), cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return run


HD64 = "testkit:tiny-qwen3-hd64"


def _hd64_training(tmp_path_factory, name: str, four_bit: bool) -> Path:
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    run = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        summary = run / "summary.json"
        if not (summary.is_file() and json.loads(summary.read_text()).get("status") == "finished"):
            shutil.rmtree(run, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--backend", "peft",
                 "--output-dir", str(run), f"model.name={HD64}", f"model.load_in_4bit={str(four_bit).lower()}",
                 "data.limit=8", "data.max_length=2048", "data.max_candidates=10", "data.min_candidates=3",
                 "train.max_steps=3", "train.learning_rate=0.02", "train.warmup_ratio=0", "train.save_steps=3",
                 "train.eval_steps=3", "train.gradient_accumulation_steps=1", "lora.r=16", "lora.alpha=32"],
                cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return run


@pytest.fixture(scope="session")
def hd64_run(tmp_path_factory) -> Path:
    return _hd64_training(tmp_path_factory, "hd64-run", four_bit=False)


@pytest.fixture(scope="session")
def hd64_4bit_run(tmp_path_factory) -> Path:
    return _hd64_training(tmp_path_factory, "hd64-4bit-run", four_bit=True)


@pytest.fixture(autouse=True)
def _unsloth_stays_out_of_the_test_process(request):
    """Importing unsloth patches transformers/trl for good, and every later in-process test of the
    peft baseline would then skip itself. Tests that need unsloth run it in a subprocess."""
    before = "unsloth" in sys.modules
    yield
    if not before and "unsloth" in sys.modules:
        pytest.fail(f"{request.node.nodeid} imported unsloth into the pytest process; run that part in a subprocess")
