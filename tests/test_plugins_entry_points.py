"""Third-party plugins found through entry points, in a real distribution, used by the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A site folder holding the demo plugin module and its dist-info with entry_points.txt."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "plugin_dist" / "sslbench_demo_plugin.py", site)
    info = site / "sslbench_demo_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sslbench-demo-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[sslbench.pretexts]\ndemo_meanab = sslbench_demo_plugin:MeanAbPretext\n\n"
        "[sslbench.protocols]\ndemo_featnorm = sslbench_demo_plugin:FeatureNormProtocol\n"
    )
    return site


def _cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "SSLBENCH_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "sslbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_list_shows_entry_point_plugins(plugin_path, tmp_path):
    result = _cli(["list"], plugin_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "demo_meanab" in result.stdout and "entry point (sslbench-demo-plugin)" in result.stdout
    assert "demo_featnorm" in result.stdout


def test_run_uses_entry_point_plugins(plugin_path, tmp_path):
    result = _cli(["run", "--pretext", "demo_meanab", "--protocol", "demo_featnorm,linear", "--steps", "3",
                   "--subset", "128", "--eval-subset", "64", "--eval-epochs", "1", "--device", "cpu",
                   "--out", str(tmp_path / "runs"), "--quiet"], plugin_path, tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("*.json"))]
    assert {(r["pretext"], r["protocol"]) for r in records} == {("demo_meanab", "demo_featnorm"),
                                                               ("demo_meanab", "linear")}
    norm = next(r for r in records if r["protocol"] == "demo_featnorm")
    assert norm["status"] == "ok" and norm["metrics"]["feature_norm"] > 0
    assert norm["train"]["steps"] == 3
    assert "demo_meanab" in result.stdout
