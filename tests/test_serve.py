"""``kitrec-fast serve`` (vLLM's OpenAI-compatible server, PyPI's CPU build in CI) and ``recommend --server``.

Oracle: the server serves the unquantized fp32 base with the run's adapter as a LoRA module, so a
greedy answer through it must be the one ``recommend --engine hf`` computes with PEFT on the same
base and adapter, token for token. The run is the session's head_dim-64 training run trained
with ``model.load_in_4bit=false`` (the hf engine then serves the same unquantized base).

One server for the module: this file starts vLLM exactly once. The server runs in its own process
group and is stopped by its pid (the last test stops it through ``serve``'s own SIGTERM handling).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from vllm_marks import needs_vllm

ROOT = Path(__file__).resolve().parents[1]
HD64 = "testkit:tiny-qwen3-hd64"
ROW = ["--dataset", "embedded:test_music", "--row", "1", "--max-new-tokens", "24", "--json"]


def kitrec(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kitrec_fast", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def answer(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        return json.loads(resp.read())


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@needs_vllm
@pytest.mark.slow
def test_serve_refuses_a_head_size_vllm_cannot_serve_before_the_engine_starts(lora_run_dir):
    # lora_run_dir: an adapter on the project's tiny Qwen3, head_dim 16 (vLLM's CPU attention: 32, 64, ...)
    t0 = time.monotonic()
    proc = kitrec("serve", "--run", str(lora_run_dir), "--port", str(free_port()), timeout=300)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, said[-3000:]
    assert said.count("error:") == 1 and "Traceback" not in said
    assert "cannot serve testkit:tiny-qwen3: its attention head size is 16" in said and "32, 64" in said
    assert "starting vLLM" not in said  # refused before any engine process
    print(f"refused in {time.monotonic() - t0:.1f}s")


@pytest.fixture(scope="module")
def server(hd64_run, tmp_path_factory):
    """``kitrec-fast serve`` on the hd64 run, in its own process group; yields once vLLM answers."""
    root = tmp_path_factory.mktemp("serve")
    run = root / "music-a"
    shutil.copytree(hd64_run, run)
    port = free_port()
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kitrec_fast", "serve", "--run", str(run), "--port", str(port)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    vllm_pid = None
    try:
        deadline = time.monotonic() + 600
        t0 = time.monotonic()
        while True:
            said = " ".join(log_path.read_text().split())
            ready = re.search(r"ready (\S+)/v1 models: (.+?) \(vLLM pid (\d+);", said)
            if ready:
                break
            assert proc.poll() is None, said[-4000:]
            assert time.monotonic() < deadline, "serve not ready in time:\n" + said[-4000:]
            time.sleep(0.5)
        vllm_pid = int(ready.group(3))
        yield {"url": ready.group(1), "models": ready.group(2).split(", "), "run": run, "proc": proc,
               "vllm_pid": vllm_pid, "log": log_path, "start_seconds": time.monotonic() - t0}
    finally:
        # by pid only: the serve process's group, then vLLM's own group
        if proc.poll() is None:
            _kill_group(proc.pid)
        if vllm_pid is not None:
            _kill_group(vllm_pid)
        proc.wait(timeout=60)


@needs_vllm
@pytest.mark.slow
def test_served_adapter_answers_with_the_hf_engines_tokens(server):
    run = server["run"]
    assert server["models"] == [HD64, "music-a"]
    assert server["url"].startswith("http://127.0.0.1:")  # loopback unless told
    print(f"server ready after {server['start_seconds']:.1f}s")
    got = answer(kitrec("recommend", "--server", server["url"], "--run", str(run), *ROW))
    want = answer(kitrec("recommend", "--engine", "hf", "--run", str(run), *ROW))
    same = ("prompt_tokens", "candidates", "raw_text", "new_tokens", "finished", "ranked_ids", "ground_truth")
    assert {k: got[k] for k in same} == {k: want[k] for k in same}
    assert got["candidates"] == 100 and got["new_tokens"] >= 1  # the whole evaluation prompt, nothing cut
    assert got["engine"] == f"server {server['url']}" and got["adapter"] == "music-a"

    # Equal answers could also come from a server ignoring the adapter: the base alone answers otherwise.
    from kitrec_fast.render.chat import render_generation_prompt
    from kitrec_fast.render.tokenizer import load_tokenizer
    from kitrec_fast.serve import complete

    tokenizer = load_tokenizer("offline:qwen3")
    prompt = render_generation_prompt(tokenizer, "Recommend one quiet album.")
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    adapted = complete(server["url"], "music-a", prompt, stops, 24)["token_ids"]
    plain = complete(server["url"], HD64, prompt, stops, 24)["token_ids"]
    assert adapted != plain


@needs_vllm
@pytest.mark.slow
def test_plain_chat_request_renders_the_runs_prompt_and_decodes_greedily(server):
    # The documented OpenAI-client route: messages, no prompt ids, no temperature given.
    from kitrec_fast.render.chat import render_generation_prompt
    from kitrec_fast.render.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("offline:qwen3")
    text = "# Expert Cross-Domain Recommendation System\nUser likes quiet albums.\n(ID: B00000AAAA) Calm\n"
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    chat = post(f"{server['url']}/v1/chat/completions",
                {"model": "music-a", "messages": [{"role": "user", "content": text}], "max_tokens": 24,
                 "stop_token_ids": stops, "return_token_ids": True, "skip_special_tokens": False})
    ids = render_generation_prompt(tokenizer, text)
    assert chat["prompt_token_ids"] == ids  # the server's chat template gives the training render
    greedy = post(f"{server['url']}/v1/completions",
                  {"model": "music-a", "prompt": ids, "max_tokens": 24, "temperature": 0,
                   "stop_token_ids": stops, "return_token_ids": True})
    # no temperature in the request: the server's default is greedy, not Qwen3's sampling settings
    assert chat["choices"][0]["token_ids"] == greedy["choices"][0]["token_ids"]


@needs_vllm
@pytest.mark.slow
def test_a_model_the_server_lacks_is_its_404_on_one_line(server, tmp_path):
    other = tmp_path / "not-served"
    shutil.copytree(server["run"], other)
    from kitrec_prompts import make_row

    prompt = tmp_path / "prompt.txt"  # a short prompt: the request, not the prompt, is under test
    prompt.write_text(make_row(user_id="U7", n_candidates=3, words=2)["instruction"])
    proc = kitrec("recommend", "--server", server["url"], "--run", str(other), "--prompt", str(prompt), "--json")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --server {server['url']}: HTTP 404: ") and "not-served" in line


@needs_vllm
@pytest.mark.slow
def test_sigterm_stops_the_whole_server(server):
    # Last in the file: it ends the module's server.
    proc, vllm_pid = server["proc"], server["vllm_pid"]
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, server["log"].read_text()[-3000:]
    assert "stopped" in server["log"].read_text()
    with pytest.raises(ProcessLookupError):  # nothing of vLLM's process group is left
        os.killpg(vllm_pid, 0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server['url']}/v1/models", timeout=5)
