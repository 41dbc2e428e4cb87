"""Plugin files loaded with ``--plugin FILE`` / ``SSLBENCH_PLUGINS``: no packaging, their hash in every record and
checkpoint hash, bad files as usage errors naming the file, and a real ``sslbench run`` (with jobs) end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.errors import UsageError
from sslbench.plugin_files import ENV_VAR, load_plugin_file, load_plugins, unload_plugin_file
from sslbench.registry import PRETEXTS

PRETEXT_FILE = '''
"""A pretext in a plain file, as a plugin author tries it before packaging it."""
from dataclasses import dataclass

from torch import nn
from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import Pretext, images_to_rgb
from sslbench.registry import register_pretext


@dataclass
class MeanAbConfig:
    lr: float = 1e-3


@register_pretext("{name}")
class FileMeanAb(Pretext):
    """Predict each image's mean ab colour from its L channel (a plugin file)."""

    Config = MeanAbConfig

    def __init__(self, config, encoder, data):
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)
        self.head = nn.Linear(self.encoder.out_channels, 2)

    def compute_loss(self, batch):
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        pred = self.head(self.encoder(normalize_l(lab[:, :1]))[-1].mean(dim=(2, 3)))
        return F.mse_loss(pred, lab[:, 1:].mean(dim=(2, 3)) / 110.0), {{}}
'''


def _write(path: Path, name: str) -> Path:
    path.write_text(PRETEXT_FILE.format(name=name))
    return path


@pytest.fixture
def unload():
    """Files a test loads in this process are forgotten after it, so no other test sees their plugins."""
    loaded: list[Path] = []
    yield loaded.append
    for path in loaded:
        unload_plugin_file(path)


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    full = {**inherited, "SSLBENCH_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sslbench", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=600)


def test_a_plugin_file_registers_with_its_path_and_hash_in_the_provenance(tmp_path, unload):
    path = _write(tmp_path / "meanab.py", "pf_meanab_provenance")
    unload(path)
    loaded = load_plugin_file(path)
    assert loaded.registered == ("pretext 'pf_meanab_provenance'",)
    provenance = PRETEXTS.provenance("pf_meanab_provenance")
    assert provenance["file"] == str(path.resolve())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["origin"] == f"file {path.resolve()}"
    assert PRETEXTS.get("pf_meanab_provenance").__name__ == "FileMeanAb"
    # Loading it again (a flag and the environment naming one file) imports it once.
    assert load_plugins([path], environ={ENV_VAR: str(path)}) == [loaded, loaded]


def test_builtin_provenance_has_no_file_keys_so_its_hashes_are_unchanged():
    assert not {"file", "sha256"} & set(PRETEXTS.provenance("regression"))


@pytest.mark.parametrize("kind", ["missing", "not_python", "syntax", "raises", "registers_nothing", "takes_builtin"])
def test_a_bad_plugin_file_is_a_usage_error_naming_it(tmp_path, kind):
    path = tmp_path / ("plugin.txt" if kind == "not_python" else "plugin.py")
    sources = {
        "not_python": "x = 1\n",
        "syntax": "x = 1\ndef broken(:\n",
        "raises": "from sslbench.registry import register_pretext\nimport json\n\n"
                  "json.loads('{not json')\n",
        "registers_nothing": "x = 1\n",
        "takes_builtin": PRETEXT_FILE.format(name="regression"),
    }
    if kind in sources:
        path.write_text(sources[kind])
    expected = {"missing": "no such file", "not_python": "not a .py file", "syntax": "syntax error at line 2",
                "raises": "JSONDecodeError (line 4)", "registers_nothing": "registers no plugin",
                "takes_builtin": "duplicate pretext name 'regression'"}[kind]
    with pytest.raises(UsageError) as info:
        load_plugin_file(path)
    assert f"plugin file {path}" in str(info.value) and expected in str(info.value)
    assert PRETEXTS.provenance("regression")["origin"] == "built-in"


def test_a_file_that_fails_half_way_leaves_nothing_registered(tmp_path, unload):
    path = tmp_path / "half.py"
    path.write_text(PRETEXT_FILE.format(name="pf_half") + "\nraise RuntimeError('after registering')\n")
    with pytest.raises(UsageError, match="after registering"):
        load_plugin_file(path)
    assert "pf_half" not in PRETEXTS
    path.write_text(PRETEXT_FILE.format(name="pf_half"))  # fixed: it loads now, under the same name
    unload(path)
    assert load_plugin_file(path).registered == ("pretext 'pf_half'",)


def test_list_shows_a_plugin_file_and_rejects_a_broken_one(tmp_path):
    path = _write(tmp_path / "meanab.py", "pf_listed")
    result = _cli(["list", "pretexts", "--plugin", str(path)], tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.split()[0] == "pf_listed"]
    assert f"[file {path.resolve()}]" in line and "mean ab colour" in line
    (tmp_path / "broken.py").write_text("def broken(:\n")
    result = _cli(["list"], tmp_path, env={ENV_VAR: os.pathsep.join([str(path), str(tmp_path / "broken.py")])})
    assert result.returncode == 2
    assert f"plugin file {tmp_path / 'broken.py'} (${ENV_VAR}): syntax error at line 1" in result.stderr


@pytest.mark.slow
def test_a_plugin_file_runs_end_to_end_and_an_edit_names_a_new_checkpoint(tmp_path):
    """A real ``sslbench run`` with ``--plugin`` whose unit runs as a separate job (``--jobs 2``), so the job must load
    the file too; the record names the file and its hash; editing the file makes ``--dry-run`` say "train"."""
    path = _write(tmp_path / "meanab.py", "pf_meanab")
    args = ["run", "--pretext", "pf_meanab", "--protocol", "linear", "--steps", "2", "--subset", "64",
            "--eval-subset", "32", "--eval-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    result = _cli([*args, "--jobs", "2", "--plugin", "meanab.py"], tmp_path)  # relative to the working directory
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "jobs" / "unit-0.log").is_file()
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*__seed*.json")]
    assert record["status"] == "ok" and record["train"]["steps"] == 2
    provenance = record["plugins"]["pretext"]
    assert provenance["file"] == str(path.resolve())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["config"]["pretext_run"]["plugin"] == provenance

    same = _cli([*args, "--dry-run"], tmp_path, env={ENV_VAR: str(path)})
    assert same.returncode == 0, same.stderr
    assert "nothing to train; linear: recorded" in same.stdout

    path.write_text(path.read_text().replace("lr: float = 1e-3", "lr: float = 1e-3  # tuned later"))
    edited = _cli([*args, "--dry-run", "--plugin", str(path)], tmp_path)
    assert edited.returncode == 0, edited.stderr
    (unit,) = [line for line in edited.stdout.splitlines() if "pf_meanab seed 0" in line]
    assert "train checkpoint " in unit and "linear: evaluate" in unit
    new_hash = unit.split("train checkpoint ")[1].split(";")[0]
    assert new_hash != record["pretext_hash"]
