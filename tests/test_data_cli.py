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

    assert main(["data", "inspect", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--row", "3",
                 "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "<think>" in printed and "length histogram" in printed and "row 3" in printed


def test_prepare_reports_bad_row(tmp_path, capsys):
    from kitrec_prompts import make_row

    rows = [make_row(user_id=f"U{i}", words=4) for i in range(3)]
    rows[1]["output"] = ""
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["data", "prepare", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--output",
                 str(tmp_path / "o")])
    assert code == 2  # a user error, as in every other command
    err = capsys.readouterr().err
    assert "row 2 (1-based" in err and "U1" in err and "--on-bad-row" in err


def _jsonl(path, rows, raw_lines=None):
    lines = [json.dumps(r) for r in rows]
    for at, text in (raw_lines or {}).items():
        lines[at] = text
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def _prepare(data, out, *extra):
    return main(["data", "prepare", "--dataset", str(data), "--tokenizer", "offline:qwen3", "--output", str(out),
                 *extra])


@pytest.mark.parametrize("break_line3,expected", [
    (lambda rows: {2: '{"user_id": "U2", "instruction": "tab\there"}'}, "Invalid control character at: column 38"),
    (lambda rows: rows[2].pop("user_type") and {}, "missing or empty field 'user_type'"),
    (lambda rows: rows[2].update(gt_item_id="NOPE0000") or {}, "'NOPE0000' is not among"),
])
def test_every_error_names_the_same_file_line(tmp_path, capsys, break_line3, expected):
    from kitrec_prompts import make_row

    rows = [make_row(user_id=f"U{i}", words=4) for i in range(4)]
    data = _jsonl(tmp_path / "rows.jsonl", rows, break_line3(rows))
    assert _prepare(data, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "row 3 (1-based; the file line for JSONL)" in err and expected in err
    assert not (tmp_path / "o").exists()


def test_blank_line_inside_jsonl_is_an_error_at_the_end_it_is_not(tmp_path):
    from kitrec_fast.data.load import DatasetLoadError

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    with pytest.raises(DatasetLoadError, match=r"row 2 \(1-based; the file line for JSONL\) is blank"):
        load_raw(str(path))
    path.write_text('{"a": 1}\n{"a": 2}\n\n  \n')
    assert load_raw(str(path)) == [{"a": 1}, {"a": 2}]


def test_empty_dataset_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert _prepare(empty, tmp_path / "o") == 2
    assert "has no rows" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("rows", ["-3", "0"])
def test_synth_needs_at_least_one_row(tmp_path, capsys, rows):
    out = tmp_path / "rows.jsonl"
    assert main(["data", "synth", "--rows", rows, "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --rows: must be >= 1, got {rows}"
    assert not out.exists()


def test_prepare_replaces_its_output_folder_whole(tmp_path, capsys):
    from datasets import load_from_disk

    from kitrec_prompts import make_row

    out = tmp_path / "prep"
    big = _jsonl(tmp_path / "big.jsonl", [make_row(user_id=f"B{i}", words=4) for i in range(6)])
    small = _jsonl(tmp_path / "small.jsonl", [make_row(user_id=f"S{i}", words=4) for i in range(2)])
    assert _prepare(big, out, "--val-fraction", "0.5") == 0
    assert len(load_from_disk(str(out / "validation"))) == 3
    # the second run has no validation rows: no stale validation data may survive next to the new report
    assert _prepare(small, out, "--val-fraction", "0") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["train"]["out"] == 2 and report["rows"]["validation"]["out"] == 0
    assert load_from_disk(str(out / "train"))["user_id"] == ["S0", "S1"]
    assert not (out / "validation" / "dataset_info.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "prep", "small.jsonl"]  # no leftovers
    # a folder that is not prepared data is never replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert _prepare(small, other) == 2
    assert "holds other files" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"


def test_num_proc_is_not_an_option():
    # it never did anything (tokenization is batched in one process); a recipe that sets it is told so
    from kitrec_fast.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num_proc'\]"):
        config_from_dict({"data": {"dataset": "embedded:dualft_music", "num_proc": 4}})


def test_skipped_rows_are_listed_with_the_same_numbering(tmp_path, capsys):
    from kitrec_prompts import make_row

    rows = [make_row(user_id=f"U{i}", words=4) for i in range(3)]
    rows[1]["gt_item_id"] = "NOPE0000"
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    assert _prepare(data, tmp_path / "o", "--on-bad-row", "skip") == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "skipped row 2 (1-based; the file line for JSONL), user_id='U1' (validate)" in printed
    assert json.loads((tmp_path / "o" / "report.json").read_text())["skipped"][0]["row"] == 2


@pytest.mark.slow
def test_skip_also_skips_a_line_that_is_not_json(tmp_path, capsys):
    from kitrec_prompts import make_row

    rows = [make_row(user_id=f"U{i}", words=4) for i in range(4)]
    rows[2]["gt_item_id"] = "NOPE0000"
    # line 2 cut short (an interrupted download, a bad merge)
    data = _jsonl(tmp_path / "rows.jsonl", rows, {1: json.dumps(rows[1])[:-1]})
    # without skip: the line is named, with the way out
    assert _prepare(data, tmp_path / "e") != 0
    err = " ".join("".join(capsys.readouterr()).split())
    assert "row 2 (1-based; the file line for JSONL) is not valid JSON" in err and "--on-bad-row skip" in err
    assert _prepare(data, tmp_path / "o", "--on-bad-row", "skip") == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "skipped row 2 (1-based; the file line for JSONL), user_id=None (parse)" in printed
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [(s["row"], s["stage"]) for s in report["skipped"]] == [(2, "parse"), (3, "validate")]
    assert report["skipped"][0]["problem"].startswith("the line is not valid JSON: ")
    assert report["skipped"][1]["user_id"] == "U2"  # the rows after it keep their own line numbers
    assert report["rows"]["train"]["out"] + report["rows"]["validation"]["out"] == 2


@pytest.mark.parametrize("name, content, expected", [
    ("rows.csv", b'user_id,history\nU1,"a, b"\n', "convert a CSV file first"),
    ("rows.bin", bytes(range(256)) * 4, "is not UTF-8 text"),
])
@pytest.mark.parametrize("skip", [False, True])
def test_another_format_names_the_supported_ones_not_skip(tmp_path, capsys, name, content, expected, skip):
    # skipping every line of a CSV or binary file would leave nothing: the formats are the way out
    data = tmp_path / name
    data.write_bytes(content)
    assert _prepare(data, tmp_path / "o", *(["--on-bad-row", "skip"] if skip else [])) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and expected in err and "--on-bad-row skip" not in err
    assert "JSON Lines (.jsonl" in err and "Parquet (.parquet)" in err
    assert not (tmp_path / "o").exists()
