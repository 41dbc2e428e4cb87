"""Cached files are loaded without running pickled code, and a bad one is reported by name, never as a traceback.

Every test plants a real pickle (a payload that creates a marker file when unpickled) with ``torch.save`` where the
harness would read a cache entry, and checks the load is refused before the payload runs. The first test shows, with
an ordinary unpickling load as the reference, that the payload is live.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sslbench.checkpoints import CheckpointStore, atomic_torch_save, load_cache_file, remove_orphaned_temporaries
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.errors import CacheError, DataError
from sslbench.features import extract_features
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.protocols._judge import JudgeConfig, get_judge, judge_cache_key, shared_cache_root
from sslbench.registry import PRETEXTS
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import TrainSummary, _state, load_trained, train_pretext

SPEC = EncoderSpec("vgg_small", {"width_mult": 0.25}, 32)


class Planted:
    """Unpickling this creates ``marker`` (as ``open(marker, "w")``): stands for any code a planted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> Path:
    """Overwrite ``path`` with a checkpoint-shaped file whose unpickling runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Planted(marker), "features": Planted(marker)}, path)
    return path


def assert_refused(info: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(info.value)
    assert str(path) in message and f"Delete {path} (a cache entry) and rerun" in message
    assert "Traceback" not in message and "weights_only=False" not in message
    assert not marker.exists(), "the planted pickle ran"


@pytest.fixture(scope="module")
def synthetic(one_thread):
    return create_dataset("synthetic", split="train", subset=32)


@pytest.fixture
def runtime() -> Runtime:
    return Runtime("cpu")


def test_planted_file_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "final.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("final", [True, False], ids=["final.pt", "last.pt"])
def test_planted_checkpoint_is_refused(tmp_path, final):
    marker = tmp_path / "marker"
    store = CheckpointStore(tmp_path / "cache", "regression", "abc")
    path = plant(store.final if final else store.partial, marker)
    with pytest.raises(CacheError) as info:
        store.load(final=final)
    assert_refused(info, path, marker)
    assert "pickles something other than tensors" in str(info.value)


def _build(name: str, data) -> torch.nn.Module:
    cls = PRETEXTS.get(name)
    info = DataInfo("synthetic", 32, data.num_classes, tuple(data.class_names))
    seed_everything(0)
    return cls(cls.Config(), SPEC, info)


def test_truncated_empty_and_garbage_checkpoints_are_cache_errors(tmp_path, synthetic, runtime):
    store = CheckpointStore(tmp_path / "cache", "regression", "abc")
    train_pretext(_build("regression", synthetic), synthetic, runtime, TrainBudget(steps=1, batch_size=16), store, 0,
                  Progress.disabled())
    assert store.load(final=True)["step"] == 1
    whole = store.final.read_bytes()
    for content in (whole[: len(whole) // 2], whole[:-100], b"", b"not a checkpoint at all\n" * 10):
        store.final.write_bytes(content)
        with pytest.raises(CacheError) as caught:
            store.load(final=True)
        assert f"Delete {store.final} (a cache entry) and rerun" in str(caught.value)
    torch.save({"weights": torch.zeros(2)}, store.final)
    with pytest.raises(CacheError, match="no pretext checkpoint"):
        store.load(final=True)


def test_missing_cache_file_is_a_cache_error(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        load_cache_file(tmp_path / "nothing.pt")


def test_planted_feature_cache_is_refused(tmp_path, synthetic, runtime):
    marker = tmp_path / "marker"
    pretext = _build("regression", synthetic)
    representation = pretext.representation()
    common = dict(batch_size=16, reduction="avg", target_dims=256, split="train", progress=Progress.disabled(),
                  cache_dir=tmp_path / "features")
    computed, labels = extract_features(representation, synthetic, runtime, **common)
    files = sorted((tmp_path / "features").glob("*.pt"))
    assert len(files) == len(computed) > 0
    reread, relabels = extract_features(representation, synthetic, runtime, **common)
    for name, value in computed.items():
        torch.testing.assert_close(reread[name], value)
    assert torch.equal(relabels, labels)

    plant(files[-1], marker)
    with pytest.raises(CacheError) as caught:
        extract_features(representation, synthetic, runtime, **common)
    assert_refused(caught, files[-1], marker)


def test_planted_cached_judge_is_refused(tmp_path, synthetic, runtime):
    marker = tmp_path / "marker"
    cfg = JudgeConfig(judge_width_mult=0.25, judge_epochs=1, judge_batch_size=16)
    data = EvalData(train=synthetic, test=synthetic, batch_size=16, seed=0,
                    cache_dir=str(tmp_path / "cache" / "features" / "abc"))
    key, _ = judge_cache_key(cfg, data.train, data.seed, runtime.precision)
    path = plant(shared_cache_root(data.cache_dir) / "judges" / key / "judge.pt", marker)
    with pytest.raises(CacheError) as caught:
        get_judge(cfg, data, runtime, Progress.disabled())
    assert_refused(caught, path, marker)


def test_planted_judge_weights_are_refused(tmp_path, synthetic, runtime):
    """``judge_weights`` is the user's file, not a cache entry: a data error that says how to re-save it."""
    marker = tmp_path / "marker"
    path = plant(tmp_path / "judge_weights.pt", marker)
    cfg = JudgeConfig(judge_weights=str(path), judge_width_mult=0.25)
    data = EvalData(train=synthetic, test=synthetic, batch_size=16, seed=0)
    with pytest.raises(DataError) as caught:
        get_judge(cfg, data, runtime, Progress.disabled())
    message = str(caught.value)
    assert str(path) in message and "torch.save(model.state_dict(), path)" in message
    assert "weights_only=False" not in message
    assert not marker.exists()


def _assert_same(actual, expected, where: str) -> None:
    if torch.is_tensor(expected):
        assert torch.is_tensor(actual) and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{where}/{index}")
    else:
        assert actual == expected, where


@pytest.mark.parametrize("name", PRETEXTS.names())
def test_every_pretext_checkpoint_round_trips_weights_only(name, tmp_path, synthetic, runtime):
    """Final and resumable checkpoints of every built-in pretext hold only what ``weights_only`` loads: weights
    (with any extra state), optimiser states, summary and RNG state come back equal, and training resumes from them."""
    pretext = _build(name, synthetic)
    store = CheckpointStore(tmp_path / "cache", name, "abc")
    if pretext.trainable:
        summary = train_pretext(pretext, synthetic, runtime, TrainBudget(steps=1, batch_size=16), store, 0,
                                Progress.disabled(), log_every=1)
    else:
        summary = TrainSummary()
        store.save(_state(pretext, 0, summary), final=True)
    state = _state(pretext, summary.steps, summary)
    store.save(state, final=False)

    expected = pretext.state_dict()
    for final in (True, False):
        loaded = store.load(final=final)
        fresh = _build(name, synthetic)
        fresh.load_state_dict(loaded["state_dict"])
        _assert_same(fresh.state_dict(), expected, f"{name} {'final' if final else 'last'}")
    _assert_same(store.load(final=False), state, f"{name} last.pt")

    if pretext.trainable:
        again = train_pretext(_build(name, synthetic), synthetic, runtime, TrainBudget(steps=2, batch_size=16),
                              store, 0, Progress.disabled(), log_every=1)
        assert again.resumed_from_step == 1 and again.steps == 2
        assert load_trained(_build(name, synthetic), store, runtime).steps == 2


# -- orphaned temporaries of killed atomic writes -------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    from collections import OrderedDict
    from pathlib import Path
    from sslbench.checkpoints import atomic_torch_save

    target, ready, go = (Path(a) for a in sys.argv[1:4])

    class Slow:
        '''Pickling this blocks the save half-way until ``go`` exists: a writer caught mid-write.'''
        def __reduce__(self):
            ready.touch()
            while not go.exists():
                time.sleep(0.05)
            return OrderedDict, ((("k", 7),),)

    atomic_torch_save({"value": Slow()}, target)
""")


def _start_writer(folder: Path, name: str) -> tuple[subprocess.Popen, Path]:
    ready, go = folder / f"{name}.ready", folder / f"{name}.go"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder / "cache" / name), str(ready), str(go)])
    return process, ready


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"writer exited with {process.returncode} before writing"
        assert time.monotonic() < deadline, f"writer did not reach {path.name}"
        time.sleep(0.05)


def test_orphaned_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "cache"
    (cache / "sub").mkdir(parents=True)
    killed, killed_ready = _start_writer(tmp_path, "killed.pt")
    live, live_ready = _start_writer(tmp_path, "live.pt")
    try:
        _wait_for(killed_ready, killed)
        _wait_for(live_ready, live)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        (orphan,) = cache.glob(".killed.pt.*.tmp")
        (in_progress,) = cache.glob(".live.pt.*.tmp")
        assert f".{killed.pid}@" in orphan.name and f".{live.pid}@" in in_progress.name

        # Temporaries named before they carried their writer: only an old one is removed.
        old_legacy = cache / "sub" / ".final.pt.abcd1234.tmp"
        new_legacy = cache / "sub" / ".last.pt.efgh5678.tmp"
        unrelated = cache / "sub" / ".notes.tmp"
        for path in (old_legacy, new_legacy, unrelated):
            path.write_bytes(b"x")
        os.utime(old_legacy, (time.time() - 7200, time.time() - 7200))
        os.utime(unrelated, (time.time() - 7200, time.time() - 7200))

        removed = remove_orphaned_temporaries(cache)
        assert sorted(removed) == sorted([orphan, old_legacy])
        assert not orphan.exists() and not old_legacy.exists()
        assert in_progress.exists() and new_legacy.exists() and unrelated.exists()

        (tmp_path / "live.pt.go").touch()
        assert live.wait(timeout=120) == 0
        assert not in_progress.exists()
        assert load_cache_file(cache / "live.pt") == {"value": {"k": 7}}
        assert remove_orphaned_temporaries(cache) == []
        assert remove_orphaned_temporaries(tmp_path / "missing") == []
    finally:
        for process in (killed, live):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_atomic_save_leaves_no_temporary(tmp_path):
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


# -- end to end through the real CLI --------------------------------------------------------------------------------
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "sslbench", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.mark.slow
def test_cli_rerun_refuses_a_planted_final_checkpoint(tmp_path):
    common = ["run", "--pretext", "regression", "--protocol", "linear", "--steps", "2", "--subset", "64",
              "--eval-subset", "64", "--set", "encoder.width_mult=0.25", "--set", "linear.epochs=1", "--device",
              "cpu", "--cache-dir", "C", "--quiet"]
    first = _cli([*common, "--out", "A"], tmp_path)
    assert first.returncode == 0, first.stderr
    (final,) = (tmp_path / "C" / "checkpoints").glob("**/final.pt")
    marker = tmp_path / "marker"
    plant(final, marker)

    rerun = _cli([*common, "--out", "B"], tmp_path)
    assert rerun.returncode in (1, 2), rerun.stderr
    stderr = rerun.stderr.replace("\n", "")
    assert str(final.relative_to(tmp_path)) in stderr and "(a cache entry) and rerun" in stderr
    assert "Traceback" not in rerun.stderr
    assert not marker.exists(), "the planted pickle ran"
