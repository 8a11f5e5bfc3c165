"""`kitrec-fast recommend`: one user's prompt through a trained run, read as evaluation reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kitrec_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
CANDS = ["B00000AAAA", "B00000BBBB", "B00000CCCC", "B00000DDDD"]


def _answer(reasoning_lines: int = 10) -> str:
    reasoning = "\n".join(f"step {i}: the user likes quiet albums" for i in range(reasoning_lines))
    items = [
        {"rank": 1, "item_id": "b00000cccc", "title": "Quiet One", "confidence_score": 8.5, "rationale": "calm"},
        {"rank": 2, "item_id": "B0INVENTED", "title": "Made Up", "confidence_score": 7, "rationale": "none"},
        {"rank": 3, "item_id": "B00000AAAA", "title": "Loud One", "confidence_score": 6, "rationale": "ok"},
        {"rank": 4, "item_id": "B00000CCCC", "title": "Quiet One", "confidence_score": 5, "rationale": "again"},
    ]
    return f"<think>\n{reasoning}\n</think>\n```json\n{json.dumps(items)}\n```"


def test_answer_table_flags_an_id_that_is_not_a_candidate_and_folds_the_reasoning():
    from rich.console import Console

    from kitrec_fast.recommend import REASONING_LINES, _print, read_answer

    kitrec = read_answer(_answer(), CANDS, "kitrec", ground_truth="B00000AAAA")
    rows = [(e["rank"], e["item_id"], e["is_candidate"], e["repeat"]) for e in kitrec["entries"]]
    # the lower-case id is the candidate in its own spelling; the invented id stays, unranked
    assert rows == [(1, "B00000CCCC", True, False), (None, "B0INVENTED", False, False),
                    (2, "B00000AAAA", True, False), (3, "B00000CCCC", True, True)]
    assert kitrec["ranked_ids"] == ["B00000CCCC", "B00000AAAA", "B00000CCCC"] and kitrec["invalid_ids"] == ["B0INVENTED"]
    strict = read_answer(_answer(), CANDS, "strict")
    assert [e["rank"] for e in strict["entries"]] == [1, 2, 3, 4]
    assert kitrec["entries"][0]["title"] == "Quiet One" and kitrec["entries"][0]["confidence_score"] == 8.5

    console = Console(record=True, width=200)
    _print({**kitrec, "prompt": "p.txt", "candidates": 4, "model": "m", "adapter": None, "engine": "hf",
            "new_tokens": 10, "finished": True}, full_reasoning=False, console=console)
    out = console.export_text()
    invented = next(line for line in out.splitlines() if "B0INVENTED" in line)
    assert "(not a candidate)" in invented and "Made Up" in invented
    assert "(ground truth)" in next(line for line in out.splitlines() if "B00000AAAA" in line)
    assert "(repeated)" in out and "1 id(s) not among the prompt's candidates" in out
    assert f"step {REASONING_LINES - 1}:" in out and f"step {REASONING_LINES}:" not in out
    assert f"{10 - REASONING_LINES} more lines" in out


def _rec(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kitrec_fast", "recommend", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_recommend_end_to_end_on_the_smoke_run_row_and_stdin_prompt_agree(smoke_run, tmp_path):
    from kitrec_prompts import make_row

    # a short hand-made test-style row (12 candidates): the CPU prefill stays small
    row = make_row(user_id="U7", n_candidates=12, words=4)
    row["output"] = ""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(make_row(user_id="U1", words=4)) + "\n" + json.dumps(row) + "\n")
    common = ["--run", str(smoke_run.run_dir), "--max-new-tokens", "6", "--json"]
    by_row = _rec(*common, "--dataset", str(data), "--row", "2")
    assert by_row.returncode == 0, by_row.stderr[-3000:]
    a = json.loads(by_row.stdout.strip().splitlines()[-1])
    # every candidate of the prompt, the row's ground truth, at most 6 new tokens, the run's adapter
    assert a["candidates"] == 12 and a["ground_truth"] == row["gt_item_id"]
    assert 1 <= a["new_tokens"] <= 6 and a["adapter"] == str(smoke_run.run_dir / "adapter")
    by_stdin = _rec(*common, "--prompt", "-", stdin=row["instruction"])
    assert by_stdin.returncode == 0, by_stdin.stderr[-3000:]
    b = json.loads(by_stdin.stdout.strip().splitlines()[-1])
    # the same prompt by either route: same tokens in, same greedy answer out
    assert (b["prompt_tokens"], b["raw_text"], b["candidates"]) == (a["prompt_tokens"], a["raw_text"], 12)
    assert b["prompt"] == "stdin" and b["ground_truth"] is None


@pytest.mark.parametrize("args,message", [
    ([], "give one prompt: --dataset FILE --row N, or --prompt FILE"),
    (["--dataset", "embedded:test_music"], "--dataset needs --row N"),
    (["--dataset", "embedded:test_music", "--row", "0"], "--row: rows are counted from 1, got 0"),
    (["--dataset", "embedded:test_music", "--row", "51"], "--row 51: embedded:test_music has 50 rows"),
    (["--prompt", "{tmp}/no_candidates.txt"], "is not a KitREC-layout prompt: no candidate items found"),
    (["--max-new-tokens", "0", "--prompt", "-"], "--max-new-tokens: must be >= 1, got 0"),
])
def test_bad_input_is_one_error_line(lora_run_dir, tmp_path, capsys, args, message):
    (tmp_path / "no_candidates.txt").write_text("# Expert Cross-Domain Recommendation System\nPick one.\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["recommend", "--run", str(lora_run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_run_without_an_adapter_is_refused(tmp_path, capsys):
    (tmp_path / "resolved_config.yaml").write_text("recipe: x\n")
    assert main(["recommend", "--run", str(tmp_path), "--prompt", "-"]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err
