"""Units as separate jobs: side by side on this machine (--jobs) and through submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sslbench.launch import child_argv

TINY = ["run", "--pretext", "random,regression", "--protocol", "linear", "--seeds", "0,1", "--steps", "3",
        "--subset", "64", "--eval-subset", "64", "--set", "linear.epochs=1", "--set", "encoder.width_mult=0.25",
        "--device", "cpu", "--quiet"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # jobs get one thread each on 2 cores; so does the reference
    return subprocess.run([sys.executable, "-m", "sslbench", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def _metrics(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text())["metrics"] for p in sorted(out.rglob("*__seed*.json"))}


def test_child_argv_drops_the_launcher_options():
    argv = ["run", "--jobs", "2", "--launcher=submitit", "--partition", "gpu", "--pretext", "quantized",
            "--gpus-per-job=4", "--timeout-min", "30", "--submitit-cluster", "local"]
    assert child_argv(argv, 3) == ["run", "--pretext", "quantized", "--unit", "3", "--quiet"]


def test_jobs_side_by_side_give_the_records_of_one_process(tmp_path):
    reference = _run(TINY + ["--out", "one", "--cache-dir", "cache-one"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    parallel = _run(TINY + ["--jobs", "2", "--out", "two", "--cache-dir", "cache-two"], tmp_path)
    assert parallel.returncode == 0, parallel.stderr
    assert "4 of 4 units to run as jobs (local)" in parallel.stderr
    assert sorted(p.name for p in (tmp_path / "two" / "jobs").iterdir()) == [f"unit-{i}.log" for i in range(4)]
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "one") and len(_metrics(tmp_path / "one")) == 4
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["outcome"]["evaluated"] == 4 and (tmp_path / "two" / "table.md").is_file()
    again = _run(TINY + ["--jobs", "2", "--out", "two", "--cache-dir", "cache-two"], tmp_path)
    assert again.returncode == 0 and "0 of 4 units to run as jobs" in again.stderr


def test_submitit_local_executor_runs_one_job_per_unit(tmp_path):
    result = _run(TINY + ["--launcher", "submitit", "--submitit-cluster", "local", "--out", "runs",
                          "--cache-dir", "cache"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("submitted as job") == 4
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*__seed*.json")]
    assert sorted((r["variant"], r["seed"]) for r in records) == [("random", 0), ("random", 1), ("regression", 0),
                                                                  ("regression", 1)]
    assert all(r["status"] == "ok" for r in records)
    assert len([p for p in (tmp_path / "runs" / "jobs").iterdir() if p.name.isdigit()]) == 4  # one folder per job
