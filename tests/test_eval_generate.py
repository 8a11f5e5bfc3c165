"""``eval generate``: real generations with the tiny Qwen3 + a LoRA adapter, killed and resumed.

The CLI runs in subprocesses: the kill test needs a process to kill, and the unsloth backend must
never share a process with the peft baseline. In-process tests use the peft backend only and are
skipped if some other test already imported unsloth into this pytest process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kitrec_fast.errors import UserError
from kitrec_fast.eval.generate import (LOCK_FILE, PAUSE_ENV, GenerateOptions, cut_at_stop, output_lock, read_done,
                                       run_generate, select_rows)

ROOT = Path(__file__).resolve().parents[1]
ROWS = 4
# A cut asked for (20 candidates, 1,536 prompt tokens): history and candidates cut by the training
# truncation (exercising it), short enough that the tiny model's CPU prefill is well under a second.
GEN_ARGS = ["--dataset", "embedded:test_music", "--limit", str(ROWS), "--max-new-tokens", "4",
            "--max-candidates", "20", "--max-prompt-tokens", "1536"]
PREDICTION_KEYS = {"row_id", "user_id", "user_type", "gt_item_id", "gt_rating", "candidate_ids", "raw_text",
                   "gen_seconds", "new_tokens"}


@pytest.fixture(scope="module")
def run_dir(lora_run_dir) -> Path:
    return lora_run_dir


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kitrec_fast", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{args}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return proc


def complete_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1]  # the piece after the last newline is not a finished line


def no_unsloth() -> None:
    if "unsloth" in sys.modules:
        pytest.skip("unsloth was imported into this pytest process; the peft baseline cannot run here")


# -- resume bookkeeping ------------------------------------------------------------------------

def test_read_done_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"row_id": 3, "raw_text": "a"}\n{"row_id": 1, "raw_text": "b"}\n{"row_id": 7, "raw_')
    notices = []
    assert read_done(path, notice=notices.append) == {3, 1}
    assert path.read_text() == '{"row_id": 3, "raw_text": "a"}\n{"row_id": 1, "raw_text": "b"}\n'
    assert len(notices) == 1 and "torn last line (19 bytes after row 2)" in notices[0]
    # A whole record whose newline was never written is kept, and its line is completed.
    path.write_text('{"row_id": 3}\n{"row_id": 4}')
    assert read_done(path, notice=notices.append) == {3, 4} and len(notices) == 1
    assert path.read_text() == '{"row_id": 3}\n{"row_id": 4}\n'
    assert read_done(tmp_path / "missing.jsonl") == set()


def test_read_done_refuses_damage_before_the_end_and_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"row_id": 3}\nnot json\n{"row_id": 4}\n')
    with pytest.raises(UserError, match="line 2"):
        read_done(path)
    path.write_text('{"row_id": 3}\n{"row_id": 3}\n')
    with pytest.raises(UserError, match="twice"):
        read_done(path)


def test_select_rows_filters_by_type_then_limits():
    raw = [{"user_type": t} for t in ["a", "b", "a", "c", "a"]]
    assert select_rows(raw, [], None) == [0, 1, 2, 3, 4]
    assert select_rows(raw, ["a", "c"], 3) == [0, 2, 3]
    assert select_rows(raw, [], 2) == [0, 1]
    # val/test copies keep user_type inside a nested metadata dict
    nested = [{"metadata": {"user_type": t}} for t in ("a", "b", "a")] + [{"user_type": "a"}]
    assert select_rows(nested, ["a"], None) == [0, 2, 3]
    # per type: the first 2 of each, then the total limit over what is left
    assert select_rows(raw, [], None, 2) == [0, 1, 2, 3]
    assert select_rows(raw, ["a", "c"], None, 2) == [0, 2, 3]
    assert select_rows(raw, ["a"], None, 1) == [0]
    assert select_rows(raw, ["a", "b"], 2, 2) == [0, 1]

    # streaming: once the limits are met and every requested type was seen, no further row is read
    def rows_then_a_trap():
        yield from raw
        raise AssertionError("read past the selection")

    assert select_rows(rows_then_a_trap(), [], 2) == [0, 1]
    assert select_rows(rows_then_a_trap(), ["a", "b"], None, 1) == [0, 1]
    assert select_rows(rows_then_a_trap(), ["a", "c"], 2) == [0, 2]


def test_cut_at_stop_counts_the_stop_token():
    g = cut_at_stop([5, 6, 151645, 151643, 151643], [151645, 151643])
    assert g.token_ids == [5, 6] and g.finished and g.new_tokens == 3
    g = cut_at_stop([5, 6, 7], [151645])
    assert g.token_ids == [5, 6, 7] and not g.finished and g.new_tokens == 3


def test_output_lock_refuses_a_second_writer_and_is_removed_after(tmp_path):
    import os
    import socket

    with output_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
        with pytest.raises(UserError, match="is in use by another `eval generate`") as info:
            with output_lock(tmp_path):
                pass
        assert f"(pid {os.getpid()} on {socket.gethostname()}, started 20" in str(info.value)
    assert not (tmp_path / LOCK_FILE).exists()
    # a lock file left by a killed process is no obstacle: flock died with it
    (tmp_path / LOCK_FILE).write_text("")
    with output_lock(tmp_path):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("field,value,option", [("max_candidates", -1, "--max-candidates"),
                                                ("batch_size", 0, "--batch-size"), ("engine", "tgi", "--engine"),
                                                ("max_new_tokens", 0, "--max-new-tokens")])
def test_bad_options_name_the_option(tmp_path, field, value, option):
    with pytest.raises(UserError, match=option):
        GenerateOptions(dataset="embedded:test_music", output=tmp_path, **{field: value})


# -- the command -------------------------------------------------------------------------------

@pytest.mark.slow
def test_test_sample_end_to_end_keeps_all_100_candidates_and_scores_under_the_paper_protocol(run_dir, tmp_path):
    # The paper evaluates on all 100 candidates: no cut unless asked for, even though the run
    # trained on 20 (data.max_candidates) with data.max_length 2048, shorter than these prompts.
    no_unsloth()
    out = tmp_path / "gen"
    summary = run_generate(GenerateOptions(dataset="embedded:test_music", output=out, run_dir=run_dir, limit=2,
                                           max_new_tokens=3, batch_size=2))
    assert summary["generated"] == 2 and not (out / LOCK_FILE).exists()
    records = [json.loads(line) for line in complete_lines(out / "predictions.jsonl")]
    from kitrec_fast.data.load import load_raw
    from kitrec_fast.data.schema import normalize_row

    raw = load_raw("embedded:test_music", "test")
    for r in records:
        full = normalize_row(raw[r["row_id"]], r["row_id"], require_target=False).parsed.candidate_ids
        assert r["candidate_ids"] == list(full) and len(full) == 100
    config = json.loads((out / "generate_config.json").read_text())
    assert config["fingerprint"]["max_candidates"] == "all" and config["fingerprint"]["candidate_seed"] is None
    # the prompt budget comes from the prompts, not from the run's data.max_length (2048)
    longest = max(r["prompt_tokens"] for r in records)
    assert longest > 2048
    assert config["prompts"] == {"longest_tokens": longest, "max_seq_length": longest + 3}

    from kitrec_fast.cli import main

    score = out / "score"
    assert main(["eval", "score", "--predictions", str(out / "predictions.jsonl"), "--output", str(score),
                 "--bootstrap", "10"]) == 0
    report = json.loads((score / "report.json").read_text())
    assert report["protocol"]["name"] == "kitrec" and report["rows"] == 2
    assert report["candidates_per_row"] == {"min": 100, "max": 100}
    assert report["provenance"]["dataset"] == "embedded:test_music"
    assert report["provenance"]["model"] == "testkit:tiny-qwen3"
    assert report["provenance"]["adapter"] == str((run_dir / "adapter").resolve())
    md = (score / "report.md").read_text()
    assert "candidates per row: 100" in md and "Protocol: **kitrec**" in md and "embedded:test_music" in md
    # the generate folder itself is accepted by `eval compare` (it finds score/)
    assert main(["eval", "compare", str(out), str(score), "--bootstrap", "10"]) == 0


@pytest.mark.slow
def test_generate_killed_half_way_resumes_each_row_exactly_once_then_scores(run_dir, tmp_path):
    out = tmp_path / "gen"
    pred = out / "predictions.jsonl"
    cmd = [sys.executable, "-m", "kitrec_fast", "eval", "generate", "--run", str(run_dir), *GEN_ARGS,
           "--batch-size", "1", "--output", str(out)]
    log = open(tmp_path / "first.log", "w")
    # A pause after each written batch gives a wide, deterministic window in which the file holds
    # some rows but not all: the kill always lands half way, never after the last row.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, PAUSE_ENV: "3"})
    deadline = time.monotonic() + 240
    try:
        while not complete_lines(pred):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no row written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    first = complete_lines(pred)
    assert 1 <= len(first) < ROWS
    # Simulate a kill in the middle of a write as well: the rerun must drop this fragment.
    with open(pred, "a", encoding="utf-8") as fh:
        fh.write('{"row_id": 2, "user_id": "A1", "raw_te')

    second = cli("eval", "generate", "--run", str(run_dir), *GEN_ARGS, "--batch-size", "2", "--output", str(out))
    assert f"{len(first)} already in" in second.stdout.replace("\n", " ")
    lines = complete_lines(pred)
    assert pred.read_text(encoding="utf-8").endswith("\n")
    assert lines[: len(first)] == first  # resumed by appending; finished rows are never redone
    records = [json.loads(line) for line in lines]
    assert sorted(r["row_id"] for r in records) == list(range(ROWS))  # every row exactly once
    for r in records:
        assert PREDICTION_KEYS <= set(r), set(r)
        assert r["gt_item_id"] in r["candidate_ids"]  # truncation keeps the ground truth
        assert 10 <= len(r["candidate_ids"]) <= 20  # --max-candidates 20, floor data.min_candidates=10
        assert r["prompt_tokens"] <= 1536
        assert 1 <= r["new_tokens"] <= 4 and isinstance(r["raw_text"], str)

    # A third run (in-process: it stops before loading a model) has nothing left to do.
    summary = run_generate(GenerateOptions(dataset="embedded:test_music", output=out, run_dir=run_dir, limit=ROWS,
                                           max_new_tokens=4, max_candidates=20, max_prompt_tokens=1536))
    assert summary["already_done"] == ROWS and summary["generated"] == 0
    assert complete_lines(pred) == lines
    config = json.loads((out / "generate_config.json").read_text())
    assert config["fingerprint"]["max_new_tokens"] == 4 and config["rows"]["already_done"] == ROWS
    assert config["fingerprint"]["max_candidates"] == 20
    assert not (out / LOCK_FILE).exists()

    # `eval score` through the real CLI entry point (in-process: scoring needs no model).
    from kitrec_fast.cli import main

    score_dir = tmp_path / "score"
    assert main(["eval", "score", "--predictions", str(pred), "--output", str(score_dir), "--bootstrap", "20"]) == 0
    report = json.loads((score_dir / "report.json").read_text())
    assert report["overall"]["n"] == ROWS
    assert sum(g["n"] for g in report["by_user_type"].values()) == ROWS


def test_rerun_with_other_settings_is_refused(run_dir, tmp_path):
    no_unsloth()
    out = tmp_path / "gen"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"row_id": 0}\n')
    fingerprint = {"model": "testkit:tiny-qwen3", "max_new_tokens": 99}
    (out / "generate_config.json").write_text(json.dumps({"fingerprint": fingerprint}))
    opts = GenerateOptions(dataset="embedded:test_music", output=out, run_dir=run_dir, max_new_tokens=4)
    with pytest.raises(UserError, match="max_new_tokens: 99 -> 4"):
        run_generate(opts)


def test_vllm_engine_without_vllm_fails_clearly(run_dir, tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    opts = GenerateOptions(dataset="embedded:test_music", output=tmp_path / "v", run_dir=run_dir, engine="vllm",
                           limit=1, max_new_tokens=4)
    with pytest.raises(UserError, match="--engine vllm needs vLLM"):
        run_generate(opts)
    assert not (tmp_path / "v" / "generate_config.json").exists()  # nothing claims a generation that never ran


def test_empty_selection_is_an_error_that_writes_nothing(run_dir, tmp_path):
    opts = GenerateOptions(dataset="embedded:test_music", output=tmp_path / "e", run_dir=run_dir,
                           user_types=["cold_start_9core_music"], max_new_tokens=4)
    with pytest.raises(UserError, match="--user-type: no row has user type 'cold_start_9core_music'"):
        run_generate(opts)
    assert not (tmp_path / "e" / "generate_config.json").exists()


def _rows_and_engine(run_dir: Path, backend_name: str, max_new_tokens: int):
    """Prompts built by the command's own row builder and an HF engine on ``backend_name``."""
    from kitrec_fast.backends import get_backend
    from kitrec_fast.data.load import load_raw
    from kitrec_fast.eval.generate import HFEngine, RowBuilder, resolve_config
    from kitrec_fast.render.tokenizer import load_tokenizer

    cfg, adapter = resolve_config(GenerateOptions(dataset="", output=Path("."), run_dir=run_dir, backend=backend_name))
    backend = get_backend(cfg.backend)
    tok = load_tokenizer(cfg.data.tokenizer)
    raw = load_raw("embedded:test_music", "test")
    rows = RowBuilder(tok, cfg, 20, 1536, "error").build([0, 1, 2], raw[:3])
    vocab = tok.get_vocab()
    engine = HFEngine(backend, cfg, adapter, [vocab["<|im_end|>"], vocab["<|endoftext|>"]], tok.pad_token_id,
                      max_new_tokens, max_seq_length=4096)
    return rows, engine


def test_left_padded_batch_generates_what_single_rows_do(run_dir):
    # Rows of different lengths in one batch: if left padding, the attention mask or the position
    # ids were wrong, the padded rows' greedy tokens would differ from their unpadded runs.
    no_unsloth()
    rows, engine = _rows_and_engine(run_dir, "peft", max_new_tokens=6)
    lengths = {len(r.prompt_ids) for r in rows}
    assert len(lengths) > 1, "need prompts of different lengths to exercise padding"
    batched = engine.generate([r.prompt_ids for r in rows])
    single = [engine.generate([r.prompt_ids])[0] for r in rows]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert all(g.new_tokens == 6 or g.finished for g in batched)


@pytest.mark.slow
def test_unsloth_fast_path_generates_what_the_peft_baseline_does(run_dir, tmp_path):
    # Same fp32 weights, same adapter, greedy: the fast path (Unsloth's CPU fallback here, with
    # for_inference) must produce the baseline's tokens. Unsloth runs in its own process.
    no_unsloth()
    out = tmp_path / "unsloth"
    cli("eval", "generate", "--run", str(run_dir), "--backend", "unsloth", "--dataset", "embedded:test_music",
        "--limit", "3", "--max-new-tokens", "6", "--max-candidates", "20", "--max-prompt-tokens", "1536",
        "--batch-size", "3", "--output", str(out))
    fast = {r["row_id"]: r for r in map(json.loads, complete_lines(out / "predictions.jsonl"))}
    assert json.loads((out / "generate_config.json").read_text())["fingerprint"]["backend"] == "unsloth"
    rows, engine = _rows_and_engine(run_dir, "peft", max_new_tokens=6)
    from kitrec_fast.render.tokenizer import load_tokenizer

    tok = load_tokenizer("offline:qwen3")
    for row, gen in zip(rows, engine.generate([r.prompt_ids for r in rows])):
        assert fast[row.row_id]["candidate_ids"] == row.candidate_ids
        assert fast[row.row_id]["raw_text"] == tok.decode(gen.token_ids, skip_special_tokens=False)


@pytest.mark.slow
def test_the_bar_and_the_final_line_show_one_rows_per_second(run_dir, tmp_path):
    # two batches (4 rows, then 1): rich's own speed starts at the first batch's end and left that
    # batch out, so the bar said ~10x the final line
    import re

    from rich.console import Console

    no_unsloth()
    console = Console(record=True, width=200, force_terminal=False)
    summary = run_generate(GenerateOptions(dataset="embedded:test_music", output=tmp_path / "gen", run_dir=run_dir,
                                           limit=5, max_new_tokens=2, batch_size=4, max_candidates=20,
                                           max_prompt_tokens=1536), console=console)
    text = console.export_text()
    bar = re.findall(r"5/5\s+([\d.]+) rows/s", text)
    final = re.findall(r"done 5 rows in [\d.]+s \(([\d.]+) rows/s\)", text)
    assert bar and final, text
    assert bar[-1] == final[0] == f"{summary['generated'] / summary['seconds']:.2f}", text
