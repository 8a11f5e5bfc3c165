"""train.log and a console that survives a closed pipe (kitrec_fast/train/runlog.py), without training."""

from __future__ import annotations

import io
import os

from kitrec_fast.train.runlog import RunLog, _Guarded


def test_a_write_to_a_pipe_whose_reader_is_gone_is_dropped_and_later_writes_too(tmp_path):
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w", buffering=1)  # line-buffered, as stderr: each line is one write
    os.close(read_end)  # `| tee`, with tee ended by the same Ctrl-C
    log = RunLog()
    log.attach(tmp_path / "train.log", "===== attempt 1")
    guarded = _Guarded(stream, log)
    guarded.write("SIGINT: finishing the current step\n")
    guarded.flush()
    stream.write("a library holding the stream itself\n")  # no EPIPE any more either
    stream.flush()
    guarded.write("checkpoint written at step 3\n")
    stream.close()
    assert (tmp_path / "train.log").read_text().splitlines() == [
        "===== attempt 1", "SIGINT: finishing the current step", "checkpoint written at step 3"]


def test_the_log_holds_what_the_terminal_showed_not_every_redraw(tmp_path):
    from rich.console import Console
    from rich.progress import Progress

    log, screen = RunLog(), io.StringIO()
    console = Console(file=_Guarded(screen, log), force_terminal=True, width=100, color_system="truecolor")
    console.print("[red]config[/] table")  # before the run directory exists: kept until attach
    log.attach(tmp_path / "train.log", "===== attempt 1")
    with Progress(console=console, auto_refresh=False) as progress:
        task = progress.add_task("train", total=40)
        rows = progress.add_task("rows", total=40)  # a display of two lines: redraws move the cursor up
        for step in range(1, 41):
            progress.update(task, completed=step)
            progress.update(rows, completed=step)
            progress.refresh()
            if step == 20:
                console.print("eval @ step 20")
    console.print("[bold]run summary[/]")
    assert screen.getvalue().count("\x1b[2K") >= 40  # the terminal got every redraw, in colour
    text = (tmp_path / "train.log").read_text()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[:2] == ["===== attempt 1", "config table"] and lines[-1] == "run summary"
    bars = [line for line in lines if line.startswith(("train", "rows"))]
    assert len(bars) == 2 and all("100%" in bar for bar in bars), lines  # the display as it was left, once
    assert lines.index("eval @ step 20") < lines.index(bars[0]) == lines.index(bars[1]) - 1
