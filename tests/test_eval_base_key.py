"""``model.eval_base``: the base a run's adapter is served on when ``--base`` is not given.

The key is read from the run's saved ``resolved_config.yaml``; ``--base`` wins over it; runs whose
keys serve different bases need ``--base``; ``generate_config.json`` and ``recommend --json`` say
where the choice came from. Runs are copies of the session's ``lora_run_dir`` (tiny fp32 Qwen3,
random adapter) with their saved key rewritten; no engine starts except the hf one of the rerun test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kitrec_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ["--engine", "hf", "--dataset", "embedded:test_music", "--limit", "1", "--max-candidates", "10",
           "--prepare-only"]


def run_with_key(lora_run_dir: Path, to: Path, eval_base: str) -> Path:
    """A copy of the run whose saved config has ``model.eval_base`` (written as training writes it)."""
    from kitrec_fast.artifacts import rundir
    from kitrec_fast.config import apply_overrides, config_from_dict

    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(lora_run_dir, to)
    cfg = config_from_dict(apply_overrides(rundir.read_resolved_raw(to), {"model.eval_base": eval_base}))
    rundir.write_resolved_config(to, cfg, "tests/test_eval_base_key.py")
    return to


def generate(capsys, *args: str) -> tuple[int, str]:
    rc = main(["eval", "generate", *args])
    out = capsys.readouterr()
    return rc, " ".join((out.out + out.err).split())


def config_of(out: Path) -> dict:
    return json.loads((out / "generate_config.json").read_text())


def test_the_runs_key_chooses_the_base_and_base_wins_over_it(lora_run_dir, tmp_path, capsys):
    run = run_with_key(lora_run_dir, tmp_path / "music", "original")
    rc, said = generate(capsys, "--run", str(run), *PREPARE, "--output", str(tmp_path / "key"))
    assert rc == 0, said
    config = config_of(tmp_path / "key")
    # hf's own base is the trained one: "original" can only have come from the run's key
    assert config["base"] == {"served": "original", "from": "model.eval_base"}
    assert config["fingerprint"]["base"] == "original"  # what a rerun into this output must match
    assert "base original (from the run's model.eval_base)" in said

    rc, said = generate(capsys, "--run", str(run), *PREPARE, "--base", "trained", "--output", str(tmp_path / "opt"))
    assert rc == 0, said
    config = config_of(tmp_path / "opt")
    assert config["base"] == {"served": "trained", "from": "--base"}
    assert config["fingerprint"]["base"] is None  # hf's own base, as outputs made before --base recorded it

    # no run: no key to read
    rc, said = generate(capsys, "--model", "testkit:tiny-qwen3", "--tokenizer", "offline:qwen3", *PREPARE,
                        "--output", str(tmp_path / "model"))
    assert rc == 0, said
    assert config_of(tmp_path / "model")["base"] == {"served": "trained", "from": "default"}


@pytest.mark.slow
def test_runs_whose_keys_serve_different_bases_need_base(lora_run_dir, tmp_path, capsys):
    a = run_with_key(lora_run_dir, tmp_path / "a" / "music-a", "original")
    b = run_with_key(lora_run_dir, tmp_path / "b" / "music-b", "trained")
    c = run_with_key(lora_run_dir, tmp_path / "c" / "music-c", "auto")
    rc, said = generate(capsys, "--run", str(a), str(b), *PREPARE, "--output", str(tmp_path / "ab"))
    assert rc == 2 and said.count("error:") == 1 and "Traceback" not in said
    assert ("error: --base: the runs' model.eval_base ask for different bases on hf "
            "(music-a: original, music-b: trained)") in said
    assert not (tmp_path / "ab" / "music-a").exists()  # refused before any output
    # --base settles it for every run
    rc, said = generate(capsys, "--run", str(a), str(b), *PREPARE, "--base", "original", "--output", str(tmp_path / "ab"))
    assert rc == 0, said
    for name in ("music-a", "music-b"):
        assert config_of(tmp_path / "ab" / name)["base"] == {"served": "original", "from": "--base"}
    # auto is the trained base on hf: these two keys agree there ...
    from kitrec_fast.artifacts.rundir import read_resolved_config
    from kitrec_fast.eval.generate.trained_base import choose_base

    keyed = [(r.name, read_resolved_config(r)) for r in (b, c)]
    assert choose_base(None, keyed, "hf") == ("trained", "model.eval_base")
    # ... but not on vLLM, where auto is the original base: serve refuses them before vLLM starts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", "serve", "--run", str(b), str(c), "--port", str(port)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and said.count("error:") == 1 and "Traceback" not in said, said[-2000:]
    assert "--base: the runs' model.eval_base ask for different bases on vllm (music-b: trained, music-c: auto)" in said


def test_a_rerun_that_would_serve_another_base_is_refused(lora_run_dir, tmp_path, capsys):
    run = run_with_key(lora_run_dir, tmp_path / "music", "original")
    gen = ["--run", str(run), "--engine", "hf", "--dataset", "embedded:test_music", "--limit", "1",
           "--max-candidates", "10", "--max-new-tokens", "2", "--output", str(tmp_path / "out")]
    rc, said = generate(capsys, *gen)
    assert rc == 0, said
    assert config_of(tmp_path / "out")["base"]["from"] == "model.eval_base"
    run_with_key(lora_run_dir, run, "auto")  # the key changed since: hf's default base now
    rc, said = generate(capsys, *gen, "--limit", "2")
    assert rc == 2 and said.count("error:") == 1, said
    assert "holds generations made with other settings (base: 'original' -> None)" in said
    # the same base asked for by the option: the output's rows stand and the next one is added
    rc, said = generate(capsys, *gen, "--limit", "2", "--base", "original")
    assert rc == 0, said
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 2
    assert config_of(tmp_path / "out")["base"]["from"] == "--base"


def test_recommend_serves_the_runs_key_and_says_so(lora_run_dir, tmp_path, capsys):
    from kitrec_prompts import make_row

    run = run_with_key(lora_run_dir, tmp_path / "music", "original")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(make_row(user_id="U7", n_candidates=8, words=4)["instruction"])
    common = ["recommend", "--run", str(run), "--engine", "hf", "--prompt", str(prompt), "--max-new-tokens", "2",
              "--json"]
    assert main(common) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (answer["base"], answer["base_from"]) == ("original", "model.eval_base")
    # a server chose its base when it started: the run's key is not an error there, --base is
    assert main([*common[:5], "--server", "http://127.0.0.1:9", "--prompt", str(prompt), "--base", "trained"]) == 2
    assert "give --base to `kitrec-fast serve`" in capsys.readouterr().err


def test_a_bad_key_is_one_error_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast.recipes.dualft_music", "--smoke", "--dry-run",
                           "model.eval_base=dequantized"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    said = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "Traceback" not in said, said
    assert said.splitlines()[-1] == "error: model.eval_base: must be one of auto, original, trained, got 'dequantized'"


def test_the_key_is_free_on_resume_and_in_every_recipe():
    import yaml

    from kitrec_fast.artifacts.rundir import config_changes
    from kitrec_fast.config import apply_overrides, config_from_dict

    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert raw["model"]["eval_base"] == "auto", path.name  # the paper's protocol, written where it is seen
    # serving is no part of training: a resume may change the key without --accept-config-change
    relevant, free = config_changes(raw, config_from_dict(apply_overrides(raw, {"model.eval_base": "trained"})))
    assert not relevant and free == {"model.eval_base": ("auto", "trained")}


def test_the_grid_leaves_the_base_to_the_runs_key_unless_base_is_given(tmp_path):
    from kitrec_fast.grid.cli import validate_jobs
    from kitrec_fast.grid.spec import GridError, GridSpec

    def spec(base=None, *overrides: str) -> GridSpec:
        return GridSpec(output=tmp_path, families=("dualft_music",), sets=("A",), backends=("peft",), smoke=True,
                        eval_base=base, overrides=overrides)

    keyed = spec(None, "model.eval_base=trained")
    (job,) = keyed.jobs()
    (cmd,) = job.generate_commands()
    # the override is trained into the run's config, which eval generate reads
    assert "--base" not in cmd and "model.eval_base=trained" in job.train_command()
    assert "eval_base" not in keyed.settings()
    (cmd,) = spec("auto", "model.eval_base=trained").jobs()[0].generate_commands()
    assert cmd[cmd.index("--base") + 1] == "auto"  # given: it wins over the key, and is recorded
    assert spec("auto").settings()["eval_base"] == "auto"
    with pytest.raises(GridError, match=r"the recipe refuses the grid's options: model\.eval_base: must be one of"):
        validate_jobs(spec(None, "model.eval_base=dequantized").jobs())
