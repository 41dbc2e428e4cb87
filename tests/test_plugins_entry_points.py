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


def _install(site: Path, module: str, dist: str, version: str, entry_points: str) -> None:
    """Put ``module`` from plugin_dist/ in ``site`` with a dist-info for ``dist`` holding ``entry_points``."""
    shutil.copy(HERE / "plugin_dist" / f"{module}.py", site)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A site folder holding two plugin distributions: the demo plugin, and one whose pretext takes the built-in
    name ``regression``."""
    site = tmp_path_factory.mktemp("site")
    _install(site, "sslbench_demo_plugin", "sslbench-demo-plugin", "0.1.0",
             "[sslbench.pretexts]\ndemo_meanab = sslbench_demo_plugin:MeanAbPretext\n\n"
             "[sslbench.protocols]\ndemo_featnorm = sslbench_demo_plugin:FeatureNormProtocol\n")
    _install(site, "sslbench_clash_plugin", "sslbench-clash-plugin", "2.3.1",
             "[sslbench.pretexts]\nregression = sslbench_clash_plugin:ClashRegression\n")
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
    found = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("*.json"))]
    records = [r for r in found if str(r.get("schema", "")).startswith("sslbench.run/")]
    assert {(r["pretext"], r["protocol"]) for r in records} == {("demo_meanab", "demo_featnorm"),
                                                               ("demo_meanab", "linear")}
    norm = next(r for r in records if r["protocol"] == "demo_featnorm")
    assert norm["status"] == "ok" and norm["metrics"]["feature_norm"] > 0
    assert norm["train"]["steps"] == 3
    assert "demo_meanab" in result.stdout


def test_list_warns_of_a_clash_and_shows_the_plugin_without_importing_it(plugin_path, tmp_path):
    result = _cli(["list", "pretexts"], plugin_path, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (builtin,) = [line for line in lines if line.split()[0] == "regression"]
    (plugin,) = [line for line in lines if line.split()[0] == "sslbench-clash-plugin:regression"]
    assert "Zhang 2016" in builtin and "[" not in builtin
    assert "a clashing third-party pretext" in plugin
    assert "[entry point (sslbench-clash-plugin), version 2.3.1]" in plugin
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "pretext 'regression'" in warning and "'regression' means sslbench:regression" in warning
    assert "'sslbench-clash-plugin:regression'" in warning

    probe = ("import sys\nfrom sslbench.cli import main\nmain(['list'])\n"
             "assert 'torch' not in sys.modules, 'list imported torch'\n"
             "assert 'sslbench_clash_plugin' not in sys.modules, 'list imported the plugin'\n")
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(plugin_path)}, timeout=600)
    assert checked.returncode == 0, checked.stderr


def test_qualified_name_reaches_the_clashing_plugin_and_the_bare_name_the_builtin(plugin_path, tmp_path):
    probe = ("import json\nfrom sslbench.registry import PRETEXTS\n"
             "plugin = PRETEXTS.get('sslbench-clash-plugin:regression')\n"
             "builtin = PRETEXTS.get('regression')\n"
             "print(json.dumps({'plugin': plugin.__module__, 'builtin': builtin.__module__,"
             " 'qualified_builtin': PRETEXTS.get('sslbench:regression').__module__,"
             " 'provenance': PRETEXTS.provenance('sslbench-clash-plugin:regression'),"
             " 'builtin_provenance': PRETEXTS.provenance('regression'),"
             " 'clashes': [c.name for c in PRETEXTS.clashes()]}))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(plugin_path)}, timeout=600)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["plugin"] == "sslbench_clash_plugin"
    assert found["builtin"] == found["qualified_builtin"] == "sslbench.pretexts.regression"
    assert found["provenance"] == {
        "name": "regression", "qualified_name": "sslbench-clash-plugin:regression",
        "origin": "entry point (sslbench-clash-plugin)", "distribution": "sslbench-clash-plugin", "version": "2.3.1",
        "plugin_version": "2024.1", "module": "sslbench_clash_plugin"}
    assert found["builtin_provenance"]["qualified_name"] == "sslbench:regression"
    assert found["builtin_provenance"]["distribution"] == "sslbench"
    assert found["clashes"] == ["regression"]
