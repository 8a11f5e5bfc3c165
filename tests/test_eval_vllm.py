"""``eval generate --engine vllm`` against the real vLLM engine (PyPI's CPU build in CI).

Oracle: with the same unquantized fp32 base and the same LoRA adapter, greedy decoding through
vLLM's ``LoRARequest`` must give the tokens PEFT's ``model.generate`` gives (``--engine hf``).
The base is the head_dim-64 tiny Qwen3 (vLLM's CPU attention has no head_dim-16 kernel, the
project's tiny model has 16), and the adapter is a smoke training run with
``model.load_in_4bit=false`` and a large learning rate, so it visibly changes greedy output.

Engine starts cost 40-80 s on 2 cores; this module starts vLLM exactly twice: the several-adapter
run (two adapters, one engine) killed half way, and its resume. A third start is interrupted with
Ctrl-C once its engine process has started its worker (~20 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vllm_marks import needs_vllm

from kitrec_fast.errors import UserError
from kitrec_fast.eval.generate import PAUSE_ENV, GenerateOptions, choose_engine, run_generate

ROOT = Path(__file__).resolve().parents[1]
HD64 = "testkit:tiny-qwen3-hd64"
ROWS = 6
GEN = ["--dataset", "embedded:test_music", "--limit", str(ROWS), "--max-new-tokens", "32",
       # a cut keeps the fp32 CPU prefill short; both engines get the same prompts either way
       "--max-candidates", "20", "--max-prompt-tokens", "1536"]
COMPARED = ("row_id", "candidate_ids", "raw_text", "new_tokens", "finished", "prompt_tokens")


def cli(*args: str, env: dict | None = None, timeout: int = 900, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if ok:
        assert proc.returncode == 0, f"{args}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1] if path.is_file() else []


def predictions(out: Path) -> dict[int, dict]:
    return {r["row_id"]: {k: r[k] for k in COMPARED} for r in map(json.loads, lines(out / "predictions.jsonl"))}


@pytest.fixture(scope="module")
def runs(hd64_run, tmp_path_factory) -> tuple[Path, Path]:
    """Two adapters on the head_dim-64 base: the session's hd64 training run, and a copy with its LoRA B negated."""
    root = tmp_path_factory.mktemp("vllm_runs")
    first = root / "music-a"
    shutil.copytree(hd64_run, first)
    return first, _copy_adapter(first, root / "music-b", lambda v: -v)


def _copy_adapter(run: Path, to: Path, change_b) -> Path:
    """A copy of ``run`` whose adapter has ``change_b`` applied to every LoRA B matrix."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, to)
    path = to / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(path))
    save_file({k: change_b(v) if "lora_B" in k else v for k, v in weights.items()}, str(path))
    return to


@pytest.fixture(scope="module")
def hf_outputs(runs, tmp_path_factory) -> Path:
    """``--engine hf`` in one command (one process per run, one after another) for both runs and for the
    base's own output: the first run with LoRA B zeroed (the adapter then adds nothing), ``music-base``."""
    base = _copy_adapter(runs[0], runs[0].parent / "music-base", lambda v: v * 0)
    out = tmp_path_factory.mktemp("hf")
    cli("eval", "generate", "--run", *map(str, runs), str(base), "--engine", "hf", *GEN, "--batch-size", "3",
        "--output", str(out))
    return out


@pytest.fixture(scope="module")
def vllm_multi(runs, tmp_path_factory) -> dict:
    """Both adapters through one vLLM engine (start 1), SIGKILLed once the first batch of the first run
    is written and while a line is half written; then the same command again (start 2)."""
    out = tmp_path_factory.mktemp("vllm_multi")
    args = ["eval", "generate", "--run", *map(str, runs), "--engine", "vllm", *GEN, "--batch-size", "2",
            "--output", str(out)]
    pred = out / runs[0].name / "predictions.jsonl"
    log_path = tmp_path_factory.mktemp("vllm_logs") / "first.log"
    with open(log_path, "w") as log:
        # Its own session: the kill takes vLLM's engine processes along.
        proc = subprocess.Popen([sys.executable, "-m", "kitrec_fast", *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, PAUSE_ENV: "20"})
        deadline = time.monotonic() + 600
        try:
            while not lines(pred):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "no row written in time"
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    first = lines(pred)
    with open(pred, "a", encoding="utf-8") as fh:  # and a kill in the middle of a write
        fh.write('{"row_id": 5, "raw_te')
    second = cli(*args)
    return {"out": out, "stdout": second.stdout, "first": first}


def test_auto_engine_is_hf_without_a_gpu_said_on_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    engine, why = choose_engine("auto")
    assert engine == "hf" and "no GPU" in why
    assert choose_engine("vllm") == ("vllm", "")


def test_a_4bit_only_base_is_refused_before_anything_loads(tmp_path):
    from kitrec_fast.backends.common import resolve_model_path

    base = tmp_path / "qwen3-bnb-4bit"
    base.mkdir()
    config = json.loads((Path(resolve_model_path(HD64)) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    proc = cli("eval", "generate", "--model", str(base), "--engine", "vllm", "--dataset", "embedded:test_music",
               "--limit", "1", "--output", str(tmp_path / "out"), ok=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())  # the console wraps long lines
    assert said.count("error:") == 1 and said.startswith("error: --engine vllm")
    assert "pre-quantized (bitsandbytes)" in said and "--model" in said
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


@needs_vllm
@pytest.mark.slow  # no engine starts, but each command imports vLLM (~20 s on 2 cores)
@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_a_head_size_the_installed_vllm_cannot_serve_is_refused_before_the_engine_starts(tmp_path, command):
    # testkit:tiny-qwen3 has head_dim 16; on a GPU vLLM has backends for it, and nothing is refused there
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    model = ["--model", "testkit:tiny-qwen3", "--engine", "vllm", "--dataset", "embedded:test_music"]
    args = (["eval", "generate", *model, "--limit", "1", "--output", str(out)] if command == "eval"
            else ["recommend", *model, "--row", "1"])
    # --verbose: vLLM's engine would announce itself if it started
    proc = cli(*args, "--verbose", ok=False, timeout=600)
    said = " ".join(proc.stdout.split()) + " " + " ".join(proc.stderr.split())  # the console wraps long lines
    assert proc.returncode == 2, said[-3000:]
    assert "Traceback" not in said and "Initializing a V1 LLM engine" not in said and "EngineCore" not in said
    assert said.count("error:") == 1 and "error: --engine vllm: vLLM 0.32" in said
    assert "cannot serve testkit:tiny-qwen3: its attention head size is 16" in said
    # the sizes come from vLLM's CPU attention backend itself; the way out is named
    assert "(CPU_ATTN) supports head sizes 32, 64, 80, 96, 112, 128" in said and "use --engine hf" in said
    assert f"train the smoke run with --model {HD64}" in said  # the CPU user's way to try vLLM
    assert not out.exists()


def test_a_context_longer_than_the_base_positions_is_one_line_before_the_engine_starts():
    # vLLM's own refusal is a traceback from inside its engine start; the tiny model has 8,192 positions
    # (hand: a 7,000-token prompt + 2,048 new tokens = 9,048 > 8,192; 6,000 + 2,048 = 8,048 fits)
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.eval.generate.vllm_check import check_context

    path = resolve_model_path(HD64)
    assert json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"] == 8192
    check_context(path, HD64, 6000, 2048)
    with pytest.raises(UserError) as info:
        check_context(path, HD64, 7000, 2048)
    message = str(info.value)
    assert "\n" not in message and "needs 9048 positions" in message and f"{HD64} has 8192" in message
    assert "--max-candidates" in message and "--engine hf" in message


def test_several_runs_need_distinct_names_and_their_own_adapters(tmp_path):
    with pytest.raises(UserError, match="several runs are named run"):
        GenerateOptions(dataset="d", output=tmp_path, runs=[tmp_path / "a" / "run", tmp_path / "b" / "run"])
    with pytest.raises(UserError, match="--adapter names one adapter"):
        GenerateOptions(dataset="d", output=tmp_path, runs=[tmp_path / "a", tmp_path / "b"], adapter="x")
    one = GenerateOptions(dataset="d", output=tmp_path, runs=[tmp_path / "a"])
    assert one.run_dir == tmp_path / "a" and one.single_runs() == [one]
    two = GenerateOptions(dataset="d", output=tmp_path, runs=[tmp_path / "a", tmp_path / "b"])
    assert [(o.run_dir.name, o.output) for o in two.single_runs()] == [("a", tmp_path / "a"), ("b", tmp_path / "b")]


@pytest.mark.slow
def test_the_adapters_change_greedy_output(runs, hf_outputs):
    # Without this, equal vLLM/hf predictions could come from both engines ignoring the adapter.
    plain = predictions(hf_outputs / "music-base")
    a, b = (predictions(hf_outputs / r.name) for r in runs)
    assert sorted(a) == sorted(plain) == list(range(ROWS))
    assert sum(a[i]["raw_text"] != plain[i]["raw_text"] for i in plain) >= ROWS // 2
    assert sum(a[i]["raw_text"] != b[i]["raw_text"] for i in plain) >= ROWS // 2


@needs_vllm
@pytest.mark.slow
def test_vllm_gives_the_hf_tokens_for_each_adapter_of_one_engine(runs, hf_outputs, vllm_multi):
    out, stdout = vllm_multi["out"], vllm_multi["stdout"]
    assert " ".join(stdout.split()).count(") loaded in ") == 1  # one engine for both runs (the console wraps)
    for run in runs:
        config = json.loads((out / run.name / "generate_config.json").read_text())
        engine = config["engine"]
        assert engine["name"] == "vllm" and engine["version"].startswith("0.32")
        assert engine["base_precision"] == "float32 (unquantized)" and engine["adapters"] == 2
        assert engine["adapter_trained_on"].startswith("unquantized")
        assert config["fingerprint"]["engine"] == "vllm" and config["fingerprint"]["backend"] is None
        got, want = predictions(out / run.name), predictions(hf_outputs / run.name)
        assert sorted(got) == list(range(ROWS))
        assert got == want, next(f"row {i}:\nvllm {got[i]}\nhf   {want[i]}" for i in got if got[i] != want[i])


@needs_vllm
@pytest.mark.slow
def test_killed_vllm_generation_of_two_runs_resumes_each_row_once(runs, vllm_multi):
    out, first = vllm_multi["out"], vllm_multi["first"]
    said = " ".join(vllm_multi["stdout"].split())
    # killed after the first batch of the first run: the second run had nothing yet
    assert 1 <= len(first) < ROWS
    assert [int(n) for n in re.findall(r"(\d+) already in ", said)] == [len(first), 0]
    pred = out / runs[0].name / "predictions.jsonl"
    assert lines(pred)[: len(first)] == first  # what was written stays, the torn line is cut off
    for run in runs:
        rows = [json.loads(ln)["row_id"] for ln in lines(out / run.name / "predictions.jsonl")]
        assert sorted(rows) == list(range(ROWS)), run.name


@needs_vllm
@pytest.mark.slow
def test_ctrl_c_while_the_engine_starts_ends_the_command_and_its_engine_processes(hd64_run, tmp_path):
    # vLLM's client waits for a ready engine in one zmq poll of up to 600 s that a Ctrl-C does not end,
    # while the engine processes, interrupted with it, are gone: the command hung.
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "kitrec_fast", "eval", "generate", "--run", str(hd64_run),
                             "--engine", "vllm", *GEN, "--output", str(tmp_path / "out")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        command, deadline = psutil.Process(proc.pid), time.monotonic() + 300
        # The engine process starts its worker once it has told the client it is there: from then
        # on the client waits for "ready", the wait the interrupt has to end.
        while not [p for p in command.children(recursive=True) if p.ppid() != proc.pid]:
            assert proc.poll() is None and time.monotonic() < deadline, "no engine worker started"
            time.sleep(0.1)
        started = command.children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and stderr.rstrip().endswith("interrupted"), stderr[-3000:]
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, alive


def test_grid_generates_the_jobs_of_one_test_set_together_once_their_training_is_done(tmp_path):
    pytest.importorskip("ray")
    from kitrec_fast.console import make_console
    from kitrec_fast.grid.runner import GridRunner
    from kitrec_fast.grid.spec import GridSpec
    from kitrec_fast.grid.state import merge_state

    spec = GridSpec(output=tmp_path, families=("singleft_music", "dualft_music"), sets=("A", "B"),
                    backends=("peft",), smoke=True)
    runner = GridRunner(spec, merge_state(spec, None, "test"), make_console())
    a, b, c = "singleft_music_seta-peft", "singleft_music_setb-peft", "dualft_music_seta-peft"
    assert runner.groups[a] == runner.groups[b] == [a, b]  # smoke: both sets use embedded:test_music
    assert c not in runner.groups[a]  # other user types: another command
    runner._record(a)["stages_done"].append("train")
    assert runner._generate_group(a) is None  # b still trains
    runner._record(b)["stages_done"].append("train")
    assert runner._generate_group(a) == [a, b]
    [cmd] = runner.jobs[a].generate_commands([runner.jobs[a], runner.jobs[b]])
    runs = cmd[cmd.index("--run") + 1: cmd.index("--dataset")]
    assert runs == [str(runner.jobs[a].run_dir), str(runner.jobs[b].run_dir)]
    # eval generate writes OUTPUT/<run name>/: exactly each job's eval_dir
    output = Path(cmd[cmd.index("--output") + 1])
    assert [output / Path(r).name for r in runs] == [runner.jobs[a].eval_dir, runner.jobs[b].eval_dir]
    runner._record(b).update(state="failed")  # a failed job no longer holds the others back
    runner._record(b)["stages_done"].remove("train")
    assert runner._generate_group(a) == [a]
    alone = runner.jobs[a].generate_commands()[0]
    assert Path(alone[alone.index("--output") + 1]) == runner.jobs[a].eval_dir
