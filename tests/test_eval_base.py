"""``--base auto|original|trained``: which base a QLoRA adapter is served on.

Oracle: ``--base trained`` on vLLM serves a checkpoint dequantized from the 4-bit weights the run
loaded, so with the same adapter its greedy tokens must be those of ``--engine hf --base trained``
(PEFT on the 4-bit model, what training computed), token for token. ``--base original`` serves the
checkpoint unquantized: it must change what is generated on at least one row (else the option
would change nothing). The run is the session's 4-bit (nf4) training run of the head_dim-64 tiny
Qwen3. This file starts vLLM once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_marks import needs_vllm

ROOT = Path(__file__).resolve().parents[1]
ROWS = 6
GEN = ["--dataset", "embedded:test_music", "--limit", str(ROWS), "--max-new-tokens", "32",
       "--max-candidates", "20", "--max-prompt-tokens", "1536", "--batch-size", "3"]
COMPARED = ("row_id", "candidate_ids", "raw_text", "new_tokens", "finished", "prompt_tokens")


def generate(run: Path, out: Path, *args: str) -> dict[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "eval", "generate", "--run", str(run), *GEN,
                           "--output", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{args}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {r["row_id"]: {k: r[k] for k in COMPARED} for r in rows}


def test_auto_is_each_engines_own_protocol_and_original_unquantizes_only_hf():
    from kitrec_fast.config import config_from_dict
    from kitrec_fast.eval.generate.trained_base import resolve_base, served_config, trained_key

    assert resolve_base("auto", "hf") == "trained" and resolve_base("auto", "vllm") == "original"
    assert resolve_base("original", "hf") == "original" and resolve_base("trained", "vllm") == "trained"
    cfg = config_from_dict({"recipe": "t", "backend": "peft", "model": {"name": "testkit:tiny-qwen3-hd64"}})
    assert cfg.model.load_in_4bit and not served_config(cfg, "original").model.load_in_4bit
    assert served_config(cfg, "trained") is cfg
    # the cache key follows every quantization setting the weights depend on
    fp4 = config_from_dict({"recipe": "t", "backend": "peft",
                            "model": {"name": "testkit:tiny-qwen3-hd64", "quant_type": "fp4"}})
    single = config_from_dict({"recipe": "t", "backend": "peft",
                               "model": {"name": "testkit:tiny-qwen3-hd64", "double_quant": False}})
    assert len({trained_key(cfg), trained_key(fp4), trained_key(single)}) == 3


def _scaled_run(run: Path, to: Path, scale: float) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, to)
    path = to / "adapter" / "adapter_model.safetensors"
    save_file({k: v * scale if "lora_B" in k else v for k, v in load_file(str(path)).items()}, str(path))
    return to


@pytest.fixture(scope="module")
def outputs(hd64_4bit_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bases")
    # The 3-step, learning-rate-0.02 adapter makes the tiny model write "," on every row whatever the
    # base; at 1/20 of its size the adapter still acts and the base's difference shows.
    run = _scaled_run(hd64_4bit_run, root / "music-4bit", 0.05)
    return {
        "hf_trained": generate(run, root / "hf-trained", "--engine", "hf", "--base", "trained"),
        "hf_original": generate(run, root / "hf-original", "--engine", "hf", "--base", "original"),
        "vllm_trained": generate(run, root / "vllm-trained", "--engine", "vllm", "--base", "trained"),
        "root": root,
    }


@needs_vllm
@pytest.mark.slow
def test_vllm_on_the_trained_base_gives_the_hf_4bit_tokens(outputs):
    got, want = outputs["vllm_trained"], outputs["hf_trained"]
    assert sorted(got) == list(range(ROWS))
    assert got == want, next(f"row {i}:\nvllm {got[i]}\nhf   {want[i]}" for i in got if got[i] != want[i])
    config = json.loads((outputs["root"] / "vllm-trained" / "generate_config.json").read_text())
    assert config["base"]["served"] == "trained" and len(config["base"]["fingerprint"]) == 16
    assert config["fingerprint"]["base"] == "trained"  # not the engine's default: a rerun must match it
    assert config["engine"]["base_precision"].startswith("float32 (dequantized")
    assert config["base"]["made_from"]["quant_type"] == "nf4" and config["base"]["made_from"]["double_quant"]
    from kitrec_fast.fsio import cache_root

    (built,) = [p for p in (cache_root() / "trained-bases").iterdir() if p.name.endswith(config["base"]["fingerprint"])]
    assert "quantization_config" not in json.loads((built / "config.json").read_text())
    assert json.loads((built / "trained_base.json").read_text())["blocksize"] == [64]


@needs_vllm
@pytest.mark.slow
def test_the_original_base_changes_what_is_generated(outputs):
    trained, original = outputs["hf_trained"], outputs["hf_original"]
    changed = sum(trained[i]["raw_text"] != original[i]["raw_text"] for i in trained)
    print(f"--base original vs trained: {changed} of {ROWS} rows differ")
    assert changed >= 1
    config = json.loads((outputs["root"] / "hf-original" / "generate_config.json").read_text())
    assert config["base"]["served"] == "original" and config["engine"]["base_precision"] == "float32"
    assert config["engine"]["adapter_trained_on"].startswith("nf4 4-bit")


def test_the_grid_passes_base_to_eval_generate_and_records_it_only_when_given(tmp_path):
    from kitrec_fast.grid.spec import GridError, GridSpec

    def spec(base) -> GridSpec:
        return GridSpec(output=tmp_path, families=("dualft_music",), sets=("A",), backends=("peft",), smoke=True,
                        eval_base=base)

    (cmd,) = spec("trained").jobs()[0].generate_commands()
    assert cmd[cmd.index("--base") + 1] == "trained"
    assert spec("trained").settings()["eval_base"] == "trained"
    (unset,) = spec(None).jobs()[0].generate_commands()
    assert "--base" not in unset and "eval_base" not in spec(None).settings()  # older grids still match
    with pytest.raises(GridError, match="--base: must be auto, original or trained"):
        spec("dequantized")
