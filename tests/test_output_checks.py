"""Every command that writes checks its output path first: an unwritable folder is one ``error:``
line and exit 2 before any data, model or predictions are read, also in a dry run, which still
creates nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kitrec_fast.cli import main


@pytest.fixture
def locked(tmp_path):
    """A folder this process cannot write into: read-only by mode for a normal user; for root
    (whom modes do not stop) immutable via chattr."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no folder root cannot write")
    else:
        folder.chmod(0o555)
    try:
        assert not os.access(folder, os.W_OK)
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


# Each command with inputs that do not exist: the output check must come before anything reads them.
COMMANDS = {
    "data prepare": (["data", "prepare", "--dataset", "missing.jsonl", "--tokenizer", "offline:qwen3",
                      "--output", "{out}"], "--output"),
    "data synth": (["data", "synth", "--rows", "2", "--output", "{out}/rows.jsonl"], "--output"),
    "eval generate": (["eval", "generate", "--model", "testkit:tiny-qwen3", "--backend", "peft",
                       "--dataset", "missing.jsonl", "--output", "{out}"], "--output"),
    "eval score": (["eval", "score", "--predictions", "missing.jsonl", "--output", "{out}"], "--output"),
    "export": (["export", "missing-run", "--merged-16bit", "{out}"], "--merged-16bit"),
    "train --dry-run": (["train", "dualft_music", "--smoke", "--backend", "peft", "--dry-run",
                         "--output-dir", "{out}"], "--output-dir"),
    "train": (["train", "dualft_music", "--smoke", "--backend", "peft", "--output-dir", "{out}"], "--output-dir"),
}


def _one_error(capsys) -> str:
    """All that was printed, as one line (a console may wrap a long message): one error, nothing else."""
    out, err = capsys.readouterr()
    text = " ".join((out + err).split())
    assert text.startswith("error: ") and text.count("error") == 1 and "Traceback" not in text, out + err
    return text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unwritable_output_is_one_error_line_before_any_work(name, locked, tmp_path, capsys):
    argv, option = COMMANDS[name]
    out = locked / "out"
    assert main([a.format(out=out) for a in argv]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {option}: cannot write {out}") and "is not writable by this user" in line
    assert not any(locked.iterdir())

    # a file where a folder must be: refused the same way, for root too
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([a.format(out=blocker / "out") for a in argv]) == 2
    assert f"{blocker} is a file, not a folder" in _one_error(capsys)


def test_the_check_creates_nothing_and_passes_a_new_nested_folder(tmp_path):
    from kitrec_fast.fsio import OutputNotWritable, check_writable

    target = tmp_path / "a" / "b" / "c"
    check_writable(target, "--output")
    check_writable(target / "rows.jsonl", "--output", file=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputNotWritable, match="exists and is not a folder"):
        check_writable(tmp_path / "f", "--output")
    with pytest.raises(OutputNotWritable, match="is a folder; give a file name"):
        check_writable(tmp_path, "--output", file=True)


def _refusing_folder() -> Path:
    """A folder that passes the permission check but refuses to create files: sysfs for root (EPERM
    on every create, though the mount is read-write and root passes access checks)."""
    sys_root = Path("/sys")
    if os.geteuid() != 0 or not sys_root.is_dir() or not os.access(sys_root, os.W_OK):
        pytest.skip("needs root and a sysfs: the only refusing folder that passes the permission check here")
    try:
        (sys_root / "kitrec-fast-probe").mkdir()
    except PermissionError:
        return sys_root
    (sys_root / "kitrec-fast-probe").rmdir()
    pytest.skip("this sysfs accepts new folders")


@pytest.mark.parametrize("name", ["data prepare", "eval score"])
def test_a_write_refused_after_the_check_is_one_error_line(name, tmp_path, capsys):
    # the work is done for real (rows prepared, predictions scored); only the final write is refused
    out = _refusing_folder() / "kitrec-fast-out"
    if name == "data prepare":
        rows = tmp_path / "rows.jsonl"
        assert main(["data", "synth", "--rows", "4", "--output", str(rows)]) == 0
        argv = ["data", "prepare", "--dataset", str(rows), "--tokenizer", "offline:qwen3", "--output", str(out)]
    else:
        from test_eval_score import model_records, write_jsonl

        preds = write_jsonl(tmp_path / "preds.jsonl", model_records(0.5, seed=1, n=12))
        argv = ["eval", "score", "--predictions", str(preds), "--output", str(out), "--bootstrap", "10"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --output: cannot write {out}: ") and \
        "Operation not permitted" in err, err
