"""``--augment``: on-device crop + flip of pretext training batches, in the hash only when on, resumable, and the same
under ``torchrun`` as in one process."""

from __future__ import annotations

import shutil

import pytest
import torch

from sslbench.checkpoints import CheckpointStore
from sslbench.cli import main
from sslbench.datasets import create_dataset
from sslbench.datasets.augment import augment_generator, augment_on_device
from sslbench.experiment import Budget, DatasetSpec, Experiment, VariantSpec
from sslbench.plan import build_pretext, resolve_plan
from sslbench.progress import Progress
from sslbench.runner import _budget
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import train_pretext


@pytest.fixture(scope="module")
def cifar_root(shared_data):
    return shared_data / "cifar10"


def test_a_process_chunk_is_augmented_as_its_part_of_the_global_batch(cifar_root):
    """Under torchrun each process holds an equal chunk of the global batch: augmenting the chunk with its shard must
    give exactly the rows that augmenting the whole batch in one process gives."""
    data = create_dataset("cifar10", root=cifar_root, split="test", subset=12)
    images = torch.stack([data[i]["image"] for i in range(12)])
    whole = augment_on_device({"image": images}, augment_generator(3, 5))["image"]
    for world in (2, 3):
        n = 12 // world
        for rank in range(world):
            chunk = augment_on_device({"image": images[rank * n:(rank + 1) * n]}, augment_generator(3, 5),
                                      shard=(rank, world))["image"]
            assert torch.equal(chunk, whole[rank * n:(rank + 1) * n]), (rank, world)
    # Without the shard, the second chunk would reuse the first chunk's draws: a different (correlated) result.
    unsharded = augment_on_device({"image": images[6:]}, augment_generator(3, 5))["image"]
    assert not torch.equal(unsharded, whole[6:])
    with pytest.raises(ValueError, match="shard"):
        augment_on_device({"image": images}, augment_generator(0, 0), shard=(2, 2))


def _experiment(tmp_path, cifar_root, augment: bool | None) -> Experiment:
    exp = Experiment(variants=[VariantSpec("regression", "regression")], protocols={"linear": {}},
                     datasets=[DatasetSpec("cifar10", data_root=str(cifar_root), subset=64, eval_subset=32)],
                     budget=Budget(steps=4, batch_size=16), device="cpu", out=tmp_path / "runs")
    if augment is not None:
        exp.budget.augment = augment
    return exp


def test_augment_enters_the_checkpoint_hash_only_when_on(tmp_path, cifar_root, capsys):
    def unit(augment):
        (only,) = resolve_plan(_experiment(tmp_path, cifar_root, augment), tmp_path / "cache").units
        return only

    default, off, on = unit(None), unit(False), unit(True)
    assert "augment" not in default.run_config["budget"]  # every earlier checkpoint keeps its hash
    assert default.checkpoint_hash == off.checkpoint_hash != on.checkpoint_hash
    common = ["run", "--pretext", "regression", "--protocol", "linear", "--dataset", "cifar10", "--data-root",
              str(cifar_root), "--subset", "64", "--eval-subset", "32", "--steps", "4", "--batch-size", "16",
              "--dry-run", "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--augment"]) == 0
    assert f"train checkpoint {on.checkpoint_hash}" in capsys.readouterr().out
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(f'[budget]\nsteps = 4\nbatch_size = 16\naugment = true\n[datasets.cifar10]\n'
                        f'data_root = "{cifar_root}"\nsubset = 64\neval_subset = 32\n'
                        '[protocols.linear]\n[variants.regression]\n')
    assert main(["run", "--config", str(exp_file), "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"train checkpoint {on.checkpoint_hash}" in capsys.readouterr().out
    exp_file.write_text('[budget]\naugment = 1\n[protocols.linear]\n[variants.regression]\n')
    assert main(["run", "--config", str(exp_file), "--dry-run"]) == 2
    assert "augment must be true or false" in capsys.readouterr().err


def _train(tmp_path, cifar_root, augment: bool, steps: int, store_dir) -> dict[str, torch.Tensor]:
    exp = _experiment(tmp_path, cifar_root, augment)
    exp.budget.steps = steps
    (unit,) = resolve_plan(exp, tmp_path / "cache").units
    seed_everything(unit.seed)
    pretext = build_pretext(unit.variant, unit.encoder, unit.run_config)
    store = CheckpointStore(store_dir, "regression", "k")
    train_pretext(pretext, unit.train_split_data, Runtime("cpu"), _budget(resolve_plan(exp, tmp_path / "cache")),
                  store, unit.seed, Progress.disabled(), checkpoint_every=2)
    return {k: v.clone() for k, v in pretext.state_dict().items()}


def test_augmented_training_resumes_bit_identically_and_differs_from_plain(tmp_path, cifar_root, one_thread):
    straight = _train(tmp_path, cifar_root, True, 4, tmp_path / "a")
    # Stop after 2 steps, then resume from that checkpoint to 4: the draws continue where they stopped.
    _train(tmp_path, cifar_root, True, 2, tmp_path / "b")
    store = CheckpointStore(tmp_path / "b", "regression", "k")
    shutil.move(store.final, store.partial)
    resumed = _train(tmp_path, cifar_root, True, 4, tmp_path / "b")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    plain = _train(tmp_path, cifar_root, False, 4, tmp_path / "c")
    assert any(not torch.equal(value, plain[name]) for name, value in straight.items() if value.is_floating_point())
