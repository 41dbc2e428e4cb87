"""Progress everywhere: plain lines off a terminal (a real ``sslbench run`` writing to a file, and its run.log), rich
bars in a terminal that leave a one-line summary, and the probe's progress by step."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from sslbench.progress import Progress

#: A plain progress line: step k/total (p%), images/s, loss, ETA.
PLAIN = re.compile(r"^(?P<task>[^\n]+?): step (?P<step>\d+)/(?P<total>\d+) \(\d+%\), (?P<rate>[\d.]+) img/s, "
                   r"loss (?P<loss>[-\d.e+]+), ETA \d+:\d\d:\d\d$", re.MULTILINE)


def test_a_run_writing_to_a_file_prints_plain_progress_lines_and_logs_them(tmp_path):
    """Off a terminal (as under nohup or a cluster job) a real run says how training and the probes go."""
    output = tmp_path / "output.txt"
    with open(output, "w") as handle:
        code = subprocess.call(
            [sys.executable, "-m", "sslbench", "run", "--pretext", "regression", "--protocol", "linear",
             "--steps", "12", "--subset", "96", "--eval-subset", "32", "--eval-epochs", "2", "--device", "cpu",
             "--set", "encoder.width_mult=0.25", "--set", "linear.batch_size=16", "--progress-every", "0",
             "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")],
            cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    text = output.read_text()
    assert code == 0, text
    assert "\x1b[" not in text  # no terminal control codes in a file
    lines = [m.groupdict() for m in PLAIN.finditer(text)]
    training = [line for line in lines if line["task"].startswith("train regression seed 0")]
    # The loss is read from the device every 10 steps: lines from step 10 on carry it, each with images/s and ETA.
    assert [int(line["step"]) for line in training] == [10, 11, 12]
    assert all(line["total"] == "12" and float(line["rate"]) > 0 for line in training)
    assert re.search(r"^train regression seed 0 .*: done, 12/12 in \d+:\d\d:\d\d, [\d.]+ img/s, loss ", text,
                     re.MULTILINE)
    # Each probe reports by step (86 training images in batches of 16: 6 steps an epoch, 12 in all), not by layer.
    probe = [int(line["step"]) for line in lines if line["task"] == "linear probe stage1"]
    assert probe == [10, 11, 12]
    for tap in ("stage1", "stage2", "stage3", "stage4"):
        assert re.search(rf"^linear probe {tap}: done, 12/12 in ", text, re.MULTILINE)
    log = (tmp_path / "runs" / "run.log").read_text()
    assert all(f"{line['task']}: step {line['step']}/{line['total']}" in log for line in lines)
    assert "linear probe stage4: done, 12/12" in log


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: lines, carriage returns, cursor-up and erase-line codes applied."""
    rows, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", text):
        if token == "\n":
            row, col = row + 1, 0
            rows += [""] * (row + 1 - len(rows))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            command, argument = token[-1], token[2:-1]
            if command == "K":
                rows[row] = "" if argument == "2" else rows[row][:col]
            elif command == "A":
                row = max(0, row - int(argument or 1))
            elif command == "G":
                col = int(argument or 1) - 1
        elif token:
            line = rows[row].ljust(col)
            rows[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [line.rstrip() for line in rows if line.strip()]


def test_terminal_bars_show_rate_loss_and_eta_and_leave_a_summary_line():
    buffer = io.StringIO()
    with Progress(console=Console(force_terminal=True, file=buffer, width=140)) as progress:
        for name in ("train a", "train b"):
            with progress.task(name, total=5) as bar:
                for _ in range(3):
                    bar.advance(images=16, loss=0.5)
                progress.refresh()
                (live,) = [line for line in _screen(buffer.getvalue()) if line.startswith(name + " ")]
                assert "3/5" in live and "img/s" in live and "loss 0.5" in live and "ETA" in live
                bar.advance(2, images=32)
    screen = _screen(buffer.getvalue())
    assert len(screen) == 2 and "━" not in "".join(screen)  # the bars are gone, their summaries stay
    for line, name in zip(screen, ("train a", "train b")):
        assert re.fullmatch(rf"{name}: done, 5/5 in \d+:\d\d:\d\d, [\d.]+ img/s, loss 0\.5", line)


def test_plain_lines_come_every_so_many_seconds_and_a_failed_task_says_where_it_stopped():
    buffer, recorded = io.StringIO(), []
    progress = Progress(console=Console(file=buffer, width=200), every=0.0, record=recorded.append)
    with progress.task("probe", total=4) as bar:
        bar.advance(images=8, loss=1.25)
        bar.advance(images=8)
    assert [line for line in recorded if ": step" in line] == [
        line for line in buffer.getvalue().splitlines() if ": step" in line]
    assert re.match(r"probe: step 1/4 \(25%\), [\d.]+ img/s, loss 1\.25, ETA ", recorded[0])
    assert re.match(r"probe: step 2/4 \(50%\), ", recorded[1])
    assert re.fullmatch(r"probe: done, 2/4 in \d+:\d\d:\d\d, [\d.]+ img/s, loss 1\.25", recorded[2])

    recorded.clear()
    rare = Progress(console=Console(file=io.StringIO()), every=3600.0, record=recorded.append)
    with pytest.raises(RuntimeError):
        with rare.task("train", total=10) as bar:
            bar.advance(images=4)
            raise RuntimeError("boom")
    assert len(recorded) == 1 and recorded[0].startswith("train: stopped at step 1/10 in ")

    quiet = io.StringIO()
    silent = Progress(enabled=False, console=Console(file=quiet))
    with silent.task("x", total=2) as bar:
        bar.advance(loss=1.0)
    assert quiet.getvalue() == ""

