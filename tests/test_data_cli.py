import json

import pytest

from kitrec_fast.cli import main
from kitrec_fast.data.load import load_raw

pytest.importorskip("kitrec_fast.data.synth")


def test_synth_prepare_inspect(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    assert main(["data", "synth", "--rows", "8", "--seed", "1", "--output", str(data)]) == 0
    rows = load_raw(str(data))
    assert len(rows) == 8 and all(r["target_domain"] == "Music" for r in rows)

    out = tmp_path / "prep"
    assert main(["data", "prepare", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--max-length", "4096",
                 "--val-fraction", "0.25", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows per user type" in printed and "p95" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["train"]["out"] + report["rows"]["validation"]["out"] == 8
    assert report["tokens"]["after"]["max"] <= 4096
    assert (out / "train" / "dataset_info.json").is_file() and (out / "validation").is_dir()

    assert main(["data", "inspect", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--index", "2",
                 "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "<think>" in printed and "length histogram" in printed and "row 2" in printed


def test_prepare_reports_bad_row(tmp_path, capsys):
    from kitrec_prompts import make_row

    rows = [make_row(user_id=f"U{i}", words=4) for i in range(3)]
    rows[1]["output"] = ""
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["data", "prepare", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--output",
                 str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().out
    assert "row 1" in err and "U1" in err and "--on-bad-row" in err
