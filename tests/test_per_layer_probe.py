"""Per-layer probes: one pass of the encoder for all of them, the same records, and a protocol in a few lines.

Real synthetic images, a real quarter-width ``vgg_small``, the real runner. Checked: ``linear`` and ``knn`` on one
checkpoint run the encoder once per split (a forward hook on the real encoder counts its passes) and record exactly
what separate runs record; features beyond the store's memory budget go to disk and come back identical; the
README's per-layer protocol example is under 25 lines and, registered in this process, runs end to end with per-layer
top-1 equal to a nearest class mean computed here in NumPy, on the README's pretext example trained by the runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import re
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from sslbench.datasets import create_dataset
from sslbench.encoders.base import Encoder
from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
from sslbench.features import FeatureStore
from sslbench.plan import build_pretext, resolve_plan
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData, PerLayerProbe, validation_split
from sslbench.protocols.knn import KNNConfig, KNNProtocol
from sslbench.protocols.linear import LinearConfig, LinearProbe
from sslbench.records import read_per_image
from sslbench.registry import PRETEXTS, PROTOCOLS, get_pretext_class
from sslbench.runner import run
from sslbench.runtime import Runtime, seed_everything

README = Path(__file__).resolve().parents[1] / "README.md"
PROBE_IMAGES, EVAL_IMAGES, BATCH = 64, 32, 32
PASSES = math.ceil(PROBE_IMAGES / BATCH) + math.ceil(EVAL_IMAGES / BATCH)  # one pass over each split


@contextlib.contextmanager
def encoder_batches() -> Iterator[list[int]]:
    """The batch sizes of every forward pass of a real encoder in eval mode (training passes are not counted)."""
    batches: list[int] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, Encoder) and not module.training:
            batches.append(int(args[0].shape[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield batches
    finally:
        handle.remove()


def _experiment(out: Path, protocols: dict[str, dict[str, Any]], variants: tuple[str, ...] = ("random",)
                ) -> Experiment:
    exp = Experiment(variants=[VariantSpec(v, v) for v in variants], protocols=protocols,
                     datasets=[DatasetSpec("synthetic", subset=PROBE_IMAGES, eval_subset=EVAL_IMAGES)],
                     encoders={"vgg_small": {"width_mult": 0.25}}, device="cpu", out=out)
    exp.budget.steps, exp.budget.eval_batch_size, exp.budget.eval_epochs = 3, BATCH, 2.0
    return exp


def _results(out: Path) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
    """(variant, protocol) -> (metrics, per-image arrays) of every record under ``out``."""
    import json

    results = {}
    for path in sorted(out.rglob("*__seed*.json")):
        record = json.loads(path.read_text())
        assert record["status"] == "ok", record.get("reason")
        arrays = {name: entry.arrays for name, entry in read_per_image(path).items()}
        results[record["variant"], record["protocol"]] = (record["metrics"], arrays)
    return results


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k]["values"], b[k]["values"]) for k in a)


def test_linear_and_knn_share_one_encoder_pass_and_record_what_separate_runs_record(tmp_path, one_thread):
    runs = {}
    for name, protocols in {"both": {"linear": {}, "knn": {}}, "linear": {"linear": {}}, "knn": {"knn": {}}}.items():
        with encoder_batches() as batches:
            outcome = run(resolve_plan(_experiment(tmp_path / name, protocols), tmp_path / f"cache-{name}"))
        assert not outcome.failed
        runs[name] = _results(tmp_path / name), batches
    results, batches = runs["both"]
    # linear reduces by average pooling, knn globally: both come out of the same pass over each split.
    assert len(batches) == PASSES and sum(batches) == PROBE_IMAGES + EVAL_IMAGES
    assert runs["linear"][1] == runs["knn"][1] == batches  # what each protocol alone costs
    for protocol in ("linear", "knn"):
        (metrics, per_image), (alone, alone_per_image) = results["random", protocol], runs[protocol][0]["random",
                                                                                                          protocol]
        assert metrics == alone
        assert _same(per_image, alone_per_image)
    assert results["random", "linear"][0]["layer"]["stage1"]["dims"] != results["random", "knn"][0]["layer"][
        "stage1"]["dims"]


def test_features_beyond_the_memory_budget_spill_to_disk_and_come_back_identical(tmp_path, one_thread):
    train = create_dataset("synthetic", split="train", subset=PROBE_IMAGES, num_train=PROBE_IMAGES)
    test = create_dataset("synthetic", split="test", subset=EVAL_IMAGES, num_test=EVAL_IMAGES)
    seed_everything(0)
    cls = get_pretext_class("random")
    pretext = cls(cls.Config(), EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), DataInfo("synthetic", 32, 8))
    configs = [LinearConfig(epochs=2.0), KNNConfig(k=5)]

    def evaluate(features: FeatureStore | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        results = []
        for protocol in (LinearProbe(configs[0]), KNNProtocol(configs[1])):
            seed_everything(0)
            data = EvalData(train=train, test=test, batch_size=BATCH, seed=0, features=features)
            metrics = protocol.evaluate(pretext, data, Runtime("cpu"), Progress.disabled())
            results.append((metrics, {k: v.arrays for k, v in protocol.per_image.items()}))
        return results

    with encoder_batches() as alone:
        separate = evaluate(None)
    assert len(alone) == 2 * PASSES  # without a shared store, each protocol extracts its own
    cache = tmp_path / "features"
    store = FeatureStore(cache, planned=[p.feature_request(c) for p, c in zip((LinearProbe, KNNProtocol), configs)],
                         memory_budget=0)
    with encoder_batches() as batches:
        shared = evaluate(store)
    assert len(batches) == PASSES
    spilled = sorted(cache.glob("spill-*/*/*.pt"))
    assert len(spilled) == 4 * 4  # (train, test) x (avg, global) x 4 taps
    for (metrics, per_image), (expected, expected_per_image) in zip(shared, separate):
        assert metrics == expected and _same(per_image, expected_per_image)
    del store
    gc.collect()
    assert not list(cache.glob("spill-*"))  # the store's folder goes with it


def _readme_example(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block after <!-- {marker} -->"
    return match.group(1)


@pytest.fixture(scope="module")
def readme_plugins() -> Iterator[types.ModuleType]:
    """The README's pretext and per-layer protocol examples, imported as a module of this process (registering
    ``my_pretext`` and ``centroid``), unregistered after."""
    module = types.ModuleType("readme_plugins")
    sys.modules[module.__name__] = module
    try:
        for marker in ("pretext-example", "per-layer-protocol-example"):
            exec(compile(_readme_example(marker), f"README.md ({marker})", "exec"), module.__dict__)
        yield module
    finally:
        PROTOCOLS.forget_module(module.__name__)
        PRETEXTS.forget_module(module.__name__)
        del sys.modules[module.__name__]


@torch.no_grad()
def _pooled(pretext: Any, dataset: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Per tap, every image's channel means (through float16, as features are stored), and the labels."""
    items = [dataset[i] for i in range(len(dataset))]
    maps = pretext.representation().eval()(images_to_rgb(torch.stack([item["image"] for item in items])))
    return [m.mean(dim=(2, 3)).half().double().numpy() for m in maps], np.array([item["label"] for item in items])


def test_readme_per_layer_protocol_runs_end_to_end_as_an_external_protocol(tmp_path, readme_plugins, one_thread):
    source = _readme_example("per-layer-protocol-example")
    assert len(source.strip().splitlines()) < 25
    assert issubclass(readme_plugins.NearestCentroid, PerLayerProbe)
    exp = _experiment(tmp_path / "runs", {"centroid": {}}, variants=("random", "my_pretext"))
    plan = resolve_plan(exp, tmp_path / "cache")
    outcome = run(plan)
    assert not outcome.failed and outcome.trained == [u.label for u in plan.units if u.variant.name == "my_pretext"]
    results = _results(tmp_path / "runs")
    taps = ["stage1", "stage2", "stage3", "stage4"]
    for variant in ("random", "my_pretext"):
        metrics, per_image = results[variant, "centroid"]
        assert set(metrics) == {"layer", "best", "train"}
        assert set(metrics["layer"]) == set(taps) and set(metrics["layer"]["stage1"]) == {"top1", "val_top1", "dims"}
        assert metrics["train"] == {"probe_images": PROBE_IMAGES - 6, "val_images": 6}
        assert set(per_image) == {f"layer/{t}/top1" for t in taps} | {"best/top1"}

    # An independent nearest class mean on the random encoder the runner built (seeded as the runner seeds it).
    (unit,) = [u for u in plan.units if u.variant.name == "random"]
    seed_everything(unit.seed)
    pretext = build_pretext(unit.variant, unit.encoder, unit.run_config)
    train_f, train_y = _pooled(pretext, unit.dataset.probe_data)
    test_f, test_y = _pooled(pretext, unit.dataset.eval_data)
    fit, val = (part.numpy() for part in validation_split(len(train_y), 0.1, unit.seed))
    metrics, per_image = results["random", "centroid"]
    for tap, train_x, test_x in zip(taps, train_f, test_f):
        means = np.stack([train_x[fit][train_y[fit] == c].mean(axis=0) for c in range(unit.dataset.eval_data
                                                                                      .num_classes)])
        nearest = lambda x: np.linalg.norm(x[:, None] - means[None], axis=2).argmin(axis=1)  # noqa: E731
        assert np.array_equal(per_image[f"layer/{tap}/top1"]["values"], 100.0 * (nearest(test_x) == test_y)), tap
        assert metrics["layer"][tap]["val_top1"] == pytest.approx(100.0 * np.mean(nearest(train_x[val]) ==
                                                                                  train_y[val]), abs=1e-9)
        assert metrics["layer"][tap]["dims"] == train_x.shape[1]
    best = metrics["best"]["layer"]
    assert metrics["best"]["val_top1"] == max(metrics["layer"][t]["val_top1"] for t in taps)
    assert metrics["best"]["top1"] == metrics["layer"][best]["top1"]


def test_a_per_layer_probe_config_without_the_shared_options_is_refused_at_definition():
    @dataclasses.dataclass
    class OnlyK:
        k: int = 3

    with pytest.raises(TypeError, match=r"Config lacks cache_features, reduction, target_dims, val_fraction.*"
                                        r"PerLayerConfig"):
        type("Broken", (PerLayerProbe,), {"Config": OnlyK})


def test_public_helpers_are_exported_and_documented():
    import sslbench.colour
    import sslbench.features
    import sslbench.heads
    import sslbench.pretext
    import sslbench.pretexts._heads
    import sslbench.protocol
    import sslbench.protocols.linear

    for module, names in [(sslbench.features, {"extract_features", "FeatureStore", "reduce_map"}),
                          (sslbench.protocol, {"PerLayerProbe", "PerLayerConfig", "validation_split", "choose_best",
                                               "correct_values", "check_finite"}),
                          (sslbench.protocols.linear, {"train_linear_probe", "validation_split"}),
                          (sslbench.heads, {"DenseHead", "ClassifierHead", "point_sample"}),
                          (sslbench.pretext, {"images_to_rgb", "merge_l_ab"}),
                          (sslbench.colour, {"rgb_to_lab", "lab_to_rgb", "normalize_l", "AB_SCALE"})]:
        assert names <= set(module.__all__), module.__name__
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value):
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"
    assert sslbench.pretexts._heads.DenseHead is sslbench.heads.DenseHead  # the old import path still works
