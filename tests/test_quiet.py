"""Known harmless upstream lines are hidden by the project's commands, and nothing else is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_marks import needs_vllm

from kitrec_fast.quiet import KNOWN_BARS, KNOWN_NOISE, KNOWN_WARNINGS, QUIET_ENV, VLLM_LEVEL

ROOT = Path(__file__).resolve().parents[1]
# bitsandbytes looks for the optional CPU kernel (and logs that it is missing) only on CPUs with
# AVX512-BF16 (bitsandbytes/backends/cpu/ops.py, `if has_avx512bf16()`)
AVX512_BF16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else False


def _python(*args: str, timeout: int = 600, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` from the checkout in an environment without what an earlier command in this
    process may have set (plus ``unset``); it must succeed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("KITREC_FAST_VERBOSE", QUIET_ENV, *unset):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _stderr(*mode: str) -> str:
    proc = _python(str(ROOT / "tests/scripts/noise_probe.py"), *mode)
    return proc.stdout + proc.stderr


def test_known_lines_hidden_others_kept():
    loud, quiet = _stderr("loud"), _stderr("quiet")
    seen = [text for _, text in KNOWN_NOISE if text in loud]
    # the real imports on this CPU machine log at least the pytree and bitsandbytes lines
    assert any("Enum subclass" in t for t in seen), loud[-2000:]
    assert any("gemm_4bit_forward" in t for t in seen) == AVX512_BF16, loud[-2000:]
    assert any("PAD/BOS/EOS" in t for t in seen), loud[-2000:]
    for text in seen + list(KNOWN_WARNINGS) + list(KNOWN_BARS):
        assert text in loud, text  # the probe really produces each one ...
        assert text not in quiet, text  # ... and the filters hide it
    for probe in ("probe: an unrelated torchao warning", "probe: an unrelated bitsandbytes warning"):
        assert probe in loud and probe in quiet


def test_commands_hide_them_unless_verbose():
    quiet, verbose = _stderr("cli"), _stderr("cli", "--verbose")
    assert ("gemm_4bit_forward" in verbose) == AVX512_BF16 and "Enum subclass" in verbose
    assert "gemm_4bit_forward" not in quiet and "Enum subclass" not in quiet
    for text in KNOWN_WARNINGS + KNOWN_BARS:
        assert text in verbose and text not in quiet, text
    assert "probe: an unrelated torchao warning" in quiet


def test_setup_final_check_hides_them_too():
    # the last line of scripts/setup.sh, run as setup runs it
    line = (ROOT / "scripts/setup.sh").read_text().strip().splitlines()[-1]
    code = line.split(' -c "', 1)[1].rsplit('"', 1)[0]
    proc = _python("-c", code)
    assert proc.stdout.startswith("kitrec_fast ")
    for text in [t for _, t in KNOWN_NOISE] + list(KNOWN_WARNINGS):
        assert text not in proc.stdout + proc.stderr, text


def test_a_process_spawned_under_python_m_kitrec_fast_hides_them():
    # `python -m kitrec_fast` runs runpy._run_module_as_main("kitrec_fast"); here it runs `--version`,
    # then a spawned child (as vLLM starts its engine core) gives a known warning. The child hides it
    # only if it imported kitrec_fast, which it does by re-running the parent's main module.
    code = f"""
import multiprocessing, runpy, sys, warnings
sys.argv = ["kitrec_fast", "--version"]
try:
    runpy._run_module_as_main("kitrec_fast")
except SystemExit:
    pass
from kitrec_fast.quiet import hide_known_noise, pass_to_children
hide_known_noise()
pass_to_children()
child = multiprocessing.get_context("spawn").Process(target=warnings.warn, args=({KNOWN_WARNINGS[0]!r},))
child.start()
child.join()
sys.exit(child.exitcode)
"""
    proc = _python("-c", code, timeout=120)
    assert proc.stdout.startswith("kitrec-fast ")  # main ran, as under `python -m`
    assert KNOWN_WARNINGS[0] not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@needs_vllm
def test_vllm_engine_processes_hide_them_and_vllm_info_unless_verbose():
    # vLLM's engine core is a spawned process: the parent's filters do not reach it, the environment does
    def run(*mode: str) -> str:
        proc = _python(str(ROOT / "tests/scripts/vllm_noise_probe.py"), *mode, timeout=900, unset=(VLLM_LEVEL[0],))
        return proc.stdout + proc.stderr

    quiet, verbose = run(), run("--verbose")
    assert "Enum subclass" in verbose  # the engine process's torchao import logs the pytree notice
    for text in [t for _, t in KNOWN_NOISE if t in verbose] + ["a parent info line", "an engine info line"]:
        assert text in verbose and text not in quiet, text
    assert "(SpawnProcess-1" in quiet and "probe: an engine warning" in quiet  # vLLM's warnings still show
