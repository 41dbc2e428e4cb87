"""``sslbench check``: every built-in pretext and protocol passes its smoke test (real builds, real training steps,
real protocol runs), and broken plugins loaded from a file fail it at the step they break, with exit code 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.check_cli import FAMILY_EXAMPLES, PRETEXT_STEPS, PROTOCOL_STEPS
from sslbench.cli import main
from sslbench.pretext import Pretext
from sslbench.registry import ENCODERS, PRETEXTS, PROTOCOLS

BROKEN_PLUGINS = '''
"""Pretexts that break their contract, each in one way."""
import torch

from sslbench.encoders.base import Tap
from sslbench.pretext import LRepresentation, Pretext, images_to_rgb, merge_l_ab
from sslbench.colour import rgb_to_lab
from sslbench.registry import register_pretext


@register_pretext("broken_nan")
class NanLoss(Pretext):
    """Its loss is NaN."""

    def __init__(self, config, encoder, data):
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)

    def compute_loss(self, batch):
        maps = self.encoder(images_to_rgb(batch["image"])[:, :1])
        return maps[-1].mean() * float("nan"), {}


class ExtraChannel(LRepresentation):
    """Declares one channel more on its deepest tap than the encoder gives."""

    def __init__(self, encoder):
        super().__init__(encoder)
        last = self.taps[-1]
        self.taps = (*self.taps[:-1], Tap(last.name, last.channels + 1, last.stride))


@register_pretext("broken_taps")
class LyingTaps(Pretext):
    """Its representation lies about its tap channels."""

    def __init__(self, config, encoder, data):
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)

    def compute_loss(self, batch):
        return self.encoder(images_to_rgb(batch["image"])[:, :1])[-1].pow(2).mean(), {}

    def representation(self):
        return ExtraChannel(self.encoder)


@register_pretext("broken_state")
class ForgetfulColorizer(LyingTaps):
    """Keeps the mean ab it colours with in a plain attribute: not in state_dict, lost on reload."""

    def __init__(self, config, encoder, data):
        super().__init__(config, encoder, data)
        self.mean_ab = torch.zeros(2)

    def prepare(self, batches, runtime):
        lab = rgb_to_lab(images_to_rgb(next(iter(batches))["image"]))
        self.mean_ab = lab[:, 1:].mean(dim=(0, 2, 3))

    def representation(self):
        return LRepresentation(self.encoder)

    def colorize(self, rgb):
        lightness = rgb_to_lab(rgb)[:, :1]
        return merge_l_ab(lightness, self.mean_ab.view(1, 2, 1, 1).expand(len(rgb), 2, *rgb.shape[-2:]))
'''


def _check(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k != "SSLBENCH_PLUGINS"}, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sslbench", "check", *args, "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _rows(stdout: str, steps: tuple[str, ...]) -> dict[tuple[str, str], dict[str, str]]:
    """The pass/fail table: (plugin, encoder) -> step -> status."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[2:] == list(steps))
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith(("FAIL ", "ok ", "- ")) or re.match(r"\d+ of \d+ passed", line):
            break
        cells = line.split()
        *plugin, encoder = cells[:-len(steps)]
        rows[(" ".join(plugin), encoder)] = dict(zip(steps, cells[-len(steps):]))
    return rows


def _builtins(registry) -> set[str]:
    return {registry.reference(e) for e in registry.entries() if e.origin == "built-in"}


def test_every_builtin_pretext_passes_on_the_default_encoder(tmp_path):
    result = _check(["pretext", "sslbench:*", "--encoder", "vgg_small"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout, PRETEXT_STEPS)
    assert {plugin for plugin, _ in rows} == _builtins(PRETEXTS)
    for (plugin, _), steps in rows.items():
        cls = PRETEXTS.get(plugin)
        assert steps["build"] == steps["taps"] == steps["reload"] == "ok", (plugin, steps)
        assert steps["train"] == ("ok" if cls.trainable else "-"), (plugin, steps)
        colorizes = cls.colorize is not Pretext.colorize
        assert steps["colorize"] == ("ok" if colorizes else "-"), (plugin, steps)


def test_a_pretext_builds_and_trains_on_every_registered_encoder(tmp_path):
    result = _check(["pretext", "regression"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout, PRETEXT_STEPS)
    expected = {FAMILY_EXAMPLES.get(name, name) for name in ENCODERS.names()}
    assert {encoder for _, encoder in rows} == expected and len(expected) >= 5
    assert all(set(steps.values()) == {"ok"} for steps in rows.values()), rows


def test_every_builtin_protocol_passes_a_tiny_real_run(tmp_path):
    result = _check(["protocol", "sslbench:*"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout, PROTOCOL_STEPS)
    assert {plugin.split(" (")[0] for plugin, _ in rows} == _builtins(PROTOCOLS)
    assert all(set(steps.values()) == {"ok"} for steps in rows.values()), rows
    # A protocol that needs a colorizer is checked on one; the others on the untrained encoder.
    assert ("colorization (regression)", "vgg_small") in rows and ("linear (random)", "vgg_small") in rows


def test_broken_plugins_from_a_file_fail_at_the_step_they_break(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PLUGINS)
    result = _check(["pretext", "broken_*", "--encoder", "vgg_small", "--plugin", str(plugin)], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = _rows(result.stdout, PRETEXT_STEPS)
    assert rows[("broken_nan", "vgg_small")] == {"build": "ok", "train": "FAIL", "taps": "skip", "colorize": "skip",
                                                 "reload": "skip"}
    assert rows[("broken_taps", "vgg_small")]["taps"] == "FAIL"
    assert rows[("broken_state", "vgg_small")] == {"build": "ok", "train": "ok", "taps": "ok", "colorize": "ok",
                                                   "reload": "FAIL"}
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert any("broken_nan on vgg_small, step train: NonFiniteLossError" in line and "nan" in line
               for line in failures)
    assert any("broken_taps on vgg_small, step taps" in line and "'stage4'" in line and "declared 257 channels"
               in line for line in failures)
    assert any("broken_state on vgg_small, step reload" in line and "state_dict" in line for line in failures)
    assert result.stdout.rstrip().endswith("0 of 3 passed, 3 failed")


@pytest.mark.parametrize("argv, message", [
    (["check", "pretext", "regresion"], "Did you mean 'regression'?"),
    (["check", "protocol", "nope_*"], "matches no registered protocol"),
    (["check", "pretext", "random", "--encoder", "vgg_smal"], "unknown encoder 'vgg_smal'"),
    (["check", "pretext", "random", "--pretext", "random"], "--pretext chooses the pretext of a protocol check"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
