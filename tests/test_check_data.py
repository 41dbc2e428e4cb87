"""``sslbench check-data`` as a user runs it: a real subprocess on an imagefolder tree of real photographs with one
file of every bad kind (made as in ``test_bad_images.py``) in ``train/`` and only good files in ``val/``. The exit
codes of a clean split and of usage errors are checked through ``sslbench.cli.main`` in this process (a subprocess
spends seconds importing torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.cli import main
from sslbench.datasets.bad_images import read_bad_images_file
from test_bad_images import write_bad_files

REPO_ROOT = Path(__file__).resolve().parents[1]


def _check_data(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSLBENCH_")}
    return subprocess.run([sys.executable, "-m", "sslbench", "check-data", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def tree(shared_data: Path, tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    expected = write_bad_files(shared_data, tmp_path / "train" / "things")
    (tmp_path / "val" / "things").mkdir(parents=True)
    for k in range(3):
        shutil.copyfile(shared_data / "cifar10" / "test" / "truck" / f"{k:04d}.jpg",
                        tmp_path / "val" / "things" / f"{k}.jpg")
    return tmp_path, expected


def test_lists_every_bad_file_by_kind_and_exits_1(tree: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = tree
    out = root / "bad_images.txt"
    result = _check_data("--dataset", "imagefolder", "--data-root", str(root), "--workers", "2", "--output", str(out))
    assert result.returncode == 1, result.stderr
    text = result.stdout
    bad = {n: k for n, k in expected.items() if k is not None}
    counts: dict[str, int] = {}
    for kind in bad.values():
        counts[kind] = counts.get(kind, 0) + 1
    assert f"{len(expected)} images checked, {len(bad)} bad" in text
    for kind, count in counts.items():
        assert any(line.split()[:2] == [kind, str(count)] for line in text.splitlines()), kind
        assert f"{kind} ({count}):" in text
    train = root / "train" / "things"
    for name in expected:
        assert (str(train / name) in text) == (name in bad), name
    section = text.split("empty (1):")[1].split("\n\n")[0]  # the files follow their kind
    assert str(train / "01_empty.jpg") in section and "02_good_frame" not in section
    assert "imagefolder val" in text and "3 images checked, 0 bad" in text
    assert "imagefolder test: not checked again" in text  # val/ already read: test falls back to it
    written = {Path(b.path).name: b.kind for b in read_bad_images_file(out)}
    assert written == bad


def test_a_clean_split_exits_0(tree: tuple[Path, dict[str, str | None]], capsys: pytest.CaptureFixture) -> None:
    root, _ = tree
    assert main(["check-data", "--dataset", "imagefolder", "--data-root", str(root), "--split", "val",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 images checked, 0 bad" in out and "no bad files" in out


def test_usage_errors_exit_2(tree: tuple[Path, dict[str, str | None]], capsys: pytest.CaptureFixture) -> None:
    root, _ = tree
    assert main(["check-data", "--dataset", "imagefolder", "--data-root", str(root), "--split", "holdout"]) == 2
    err = capsys.readouterr().err
    assert "'holdout'" in err and "train, val, test" in err
    assert main(["check-data", "--dataset", "coco", "--data-root", str(root / "missing")]) == 2
    captured = capsys.readouterr()
    assert str(root / "missing") in captured.err and "not checked" not in captured.out
    assert main(["check-data", "--dataset", "coco", "--data-root", str(root), "--set", "colour=1"]) == 2
    err = capsys.readouterr().err
    assert "no option 'colour'" in err and "year" in err
    assert main(["check-data", "--dataset", "synthetic"]) == 2
    assert "nothing to check" in capsys.readouterr().err
