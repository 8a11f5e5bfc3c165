"""What the documented commands do to a checkout: long messages stay whole in logs, the documented
order of commands never lands on "nothing to do", and what they create is ignored by git. The
commands are those of the README and of every page of the manual (docs/), so moving a command
from one to the other loses no check."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED = "\n".join(page.read_text() for page in PAGES)


def test_a_long_message_is_one_line_outside_a_terminal(capsys):
    from kitrec_fast.console import make_console

    console = make_console()  # pytest captures stdout: not a terminal
    message = "error: row 5 (1-based; the file line for JSONL) " + "is broken " * 30 + "use --on-bad-row skip"
    console.print(message)
    assert capsys.readouterr().out == message + "\n"


def _commands(text: str) -> list[list[str]]:
    """The shell commands of the bash blocks in ``text`` (continuation lines joined, comments cut)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def _cpu_training_runs() -> list[tuple[str, list[str]]]:
    """(recipe, parser arguments) of every documented command a CPU user trains with: quickstart, the
    --smoke recipe commands (torchrun included), and the plain baseline's ``python -m`` line with
    the --smoke that the no-GPU message tells them to add. A command written on two pages counts once."""
    runs = []
    for words in _commands(DOCUMENTED):
        words = [w for w in words if w != "&&"]
        if "quickstart" in words:
            runs.append(("dualft_music", words[words.index("quickstart") + 1:] + ["--smoke"]))
            continue
        if "-m" not in words or not words[words.index("-m") + 1].startswith("kitrec_fast.recipes."):
            continue
        at = words.index("-m") + 1
        argv = words[at + 1:]
        if "--smoke" not in argv and words[0] == "python" and "--backend" in argv and "--dry-run" not in argv:
            argv = argv + ["--smoke"]
        if "--smoke" in argv:
            runs.append((words[at].rsplit(".", 1)[1], argv))
    return list(dict.fromkeys((family, tuple(argv)) for family, argv in runs))


def test_documented_training_commands_each_write_their_own_run_directory():
    # Run in the order the pages give them, two commands that share a folder would make the second
    # say "finished run ... nothing to do" (or resume the first) instead of training.
    from kitrec_fast.train.cli import build_parser, parse_run_args, resolve_config

    runs = _cpu_training_runs()
    assert len(runs) >= 4, runs  # quickstart, the smoke recipe, the baseline, the torchrun smoke
    folders = {}
    for family, argv in runs:
        args = parse_run_args(build_parser("docs", False, ""), list(argv))
        folder = resolve_config(family, args).resolved_output_dir
        assert folder not in folders, f"{family} {argv} and {folders.get(folder)} share {folder}"
        folders[folder] = (family, argv)


def _git_ignored(path: str) -> bool:
    # a folder the command would create is ignored when a file inside it is
    probe = path if "." in Path(path).name else path.rstrip("/") + "/file"
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=ROOT).returncode == 0


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_what_the_documented_commands_create_is_ignored():
    created = set()
    for words in _commands(DOCUMENTED):
        for flag in ("--output", "--output-dir", "--merged-16bit"):
            if flag in words:
                created.add(words[words.index(flag) + 1])
    created = {p for p in created if not p.startswith(("/", "$", "DIR", "{")) and "<" not in p}
    assert {"runs/music-smoke", "eval/", "merged/", "prepared/", "synth.jsonl"} <= created, created
    # the runs' default folders, and the benchmark harness writing next to the committed results
    created |= {"runs/dualft_music_seta-unsloth-smoke", "grid",
                "benchmarks/results/cpu/logs/calibrate.log", "benchmarks/results/cpu/specs/x.json"}
    assert [p for p in sorted(created) if not _git_ignored(p)] == []
    assert not _git_ignored("kitrec_fast/eval/cli.py") and not _git_ignored("benchmarks/results/cpu/results.md")
