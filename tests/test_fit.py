"""The one training loop, :func:`sslbench.fit.fit`: gradient accumulation, resuming, logged means read every few
steps, skipped batches, the on-device batch transform, DDP's no_sync, and the pretext budget's ``accumulate``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sslbench.checkpoints import CheckpointStore
from sslbench.cli import main
from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.encoders import create_encoder
from sslbench.errors import NonFiniteLossError, UsageError
from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
from sslbench.fit import fit
from sslbench.plan import resolve_plan
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.progress import Progress
from sslbench.registry import get_pretext_class
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import train_pretext


@pytest.fixture(scope="module")
def cifar(shared_data, one_thread):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="train", subset=64)


@pytest.fixture(scope="module")
def synthetic(one_thread):
    return create_dataset("synthetic", split="train", subset=40, num_train=40)


class Classifier(nn.Module):
    """A real encoder (its batch norm in eval mode: the same function of each image whatever the batch) and a head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = create_encoder("vgg_small", in_chans=1, image_size=32, width_mult=0.25)
        self.head = nn.Linear(self.encoder.out_channels, num_classes)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(normalize_l(rgb_to_lab(rgb)[:, :1]))[-1].mean(dim=(2, 3)))


def _train(model: nn.Module, dataset, runtime: Runtime, batch_size: int, accumulate: int, steps: int) -> nn.Module:
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_of(batch):
        return F.cross_entropy(model(images_to_rgb(batch["image"])), batch["label"])

    state = fit(loss_of, lambda e: runtime.loader(dataset, batch_size, shuffle=True, seed=3, epoch=e, drop_last=True),
                total=steps, runtime=runtime, optimizer=opt, accumulate=accumulate)
    assert state.step == steps and state.images == steps * batch_size * accumulate
    return model


def test_accumulating_two_batches_matches_one_batch_of_twice_the_size(cifar):
    """Accumulation is a larger batch computed in parts: 6 steps of 2 × 8 images end where 6 steps of 16 end."""
    runtime = Runtime("cpu")
    seed_everything(0)
    initial = Classifier(cifar.num_classes)
    big = _train(copy.deepcopy(initial), cifar, runtime, batch_size=16, accumulate=1, steps=6)
    parts = _train(copy.deepcopy(initial), cifar, runtime, batch_size=8, accumulate=2, steps=6)
    small = _train(copy.deepcopy(initial), cifar, runtime, batch_size=8, accumulate=1, steps=6)
    for (name, a), b, c, d in zip(big.state_dict().items(), parts.state_dict().values(),
                                  small.state_dict().values(), initial.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    moved = [name for (name, a), d in zip(big.state_dict().items(), initial.state_dict().values())
             if not torch.equal(a, d)]
    assert any(name.endswith("weight") for name in moved)  # it trained (eval-mode statistics stay)
    # ... and accumulation is not a no-op: batches of 8 stepped every batch go elsewhere.
    assert any(not torch.allclose(b, c, rtol=1e-4, atol=1e-6)
               for b, c in zip(parts.state_dict().values(), small.state_dict().values()))


def _labels_per_step(dataset, runtime: Runtime, *, total: int, start: int, per_epoch: int):
    seen: list[list[int]] = []

    def record(batch):
        seen.append(batch["label"].tolist())
        return {"n": float(len(seen))}

    fit(record, lambda e: runtime.loader(dataset, 8, shuffle=True, seed=1, epoch=e, drop_last=True), total=total,
        runtime=runtime, start_step=start, steps_per_epoch=per_epoch)
    return seen


def test_a_resumed_fit_sees_the_batches_an_uninterrupted_one_sees(synthetic):
    runtime = Runtime("cpu")
    per_epoch = len(runtime.loader(synthetic, 8, shuffle=True, seed=1, drop_last=True))  # 5
    whole = _labels_per_step(synthetic, runtime, total=12, start=0, per_epoch=per_epoch)
    for start in (3, 5, 7):
        assert _labels_per_step(synthetic, runtime, total=12, start=start, per_epoch=per_epoch) == whole[start:]
    assert whole[:5] != whole[5:10]  # epochs are shuffled differently


def test_losses_stay_on_the_device_and_their_means_are_read_every_log_every_steps(synthetic):
    runtime = Runtime("cpu")
    values: list[float] = []
    weight = nn.Parameter(torch.tensor(2.0))
    opt = torch.optim.SGD([weight], lr=0.01)

    def loss_of(batch):
        loss = (weight * images_to_rgb(batch["image"]).mean()) ** 2
        values.append(loss.item())  # the test's own reference, read once per step
        return loss, {"plain": 1.5}  # a plugin may still log plain floats

    state = fit(loss_of, lambda e: runtime.loader(synthetic, 8, shuffle=True, seed=0, epoch=e), total=7,
                runtime=runtime, optimizer=opt, log_every=3, epoch_means=True)
    assert [entry["step"] for entry in state.history] == [3, 6, 7]
    for entry, window in zip(state.history, (values[0:3], values[3:6], values[6:7])):
        assert entry["loss"] == sum(window) / len(window)  # exact: summed in float64 like Python floats
        assert entry["plain"] == 1.5
    assert state.epoch_means[0]["loss"] == sum(values[:5]) / 5 and state.epoch_means[1]["loss"] == sum(values[5:]) / 2
    assert state.first["loss"] == values[0] and state.last["loss"] == values[-1]


def test_small_batches_are_skipped_and_an_epoch_without_one_is_a_usage_error(synthetic):
    runtime = Runtime("cpu")
    five = torch.utils.data.Subset(synthetic, range(5))
    sizes: list[int] = []

    def count(batch):
        sizes.append(batch["image"].shape[0])
        return {}

    state = fit(count, lambda e: runtime.loader(five, 2, shuffle=True, seed=0, epoch=e), total=4, runtime=runtime,
                min_batch=2)
    assert sizes == [2, 2, 2, 2] and state.epoch == 2  # each epoch's batch of 1 skipped, not counted
    with pytest.raises(UsageError, match="need two"):
        fit(count, lambda e: runtime.loader(torch.utils.data.Subset(synthetic, [0]), 2, shuffle=True, seed=0),
            total=1, runtime=runtime, min_batch=2, empty_epoch="need two")


def test_the_batch_transform_runs_on_each_device_batch_before_the_step(synthetic):
    runtime = Runtime("cpu")
    seen = []

    def flip(batch):
        return {**batch, "image": batch["image"].flip(-1), "flipped": True}

    def step(batch):
        seen.append(batch)
        return {}

    loader = runtime.loader(synthetic, 8, shuffle=False, seed=0)
    fit(step, lambda e: loader, total=2, runtime=runtime, batch_transform=flip)
    originals = list(loader)[:2]
    assert all(b["flipped"] and torch.equal(b["image"], o["image"].flip(-1)) for b, o in zip(seen, originals))


def test_a_non_finite_loss_names_the_loop_the_step_and_what_to_change(synthetic):
    runtime = Runtime("cpu")
    weight = nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.SGD([weight], lr=0.1)
    losses = iter([1.0, 2.0, math.inf])
    with pytest.raises(NonFiniteLossError, match=r"toy probe: loss at step 2 of 3 is inf.*; lower toy\.lr"):
        fit(lambda batch: weight * next(losses), lambda e: runtime.loader(synthetic, 8, shuffle=False, seed=0),
            total=3, runtime=runtime, optimizer=opt, accumulate=2, where="toy probe", hint="lower toy.lr")
    broken = nn.Parameter(torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError, match=r"toy: weights not finite after step 1 of 1 \(weight\); lower toy"):
        fit(lambda batch: broken * 1.0, lambda e: runtime.loader(synthetic, 8, shuffle=False, seed=0), total=1,
            runtime=runtime, optimizer=torch.optim.SGD([broken], lr=math.inf), where="toy", hint="lower toy.lr",
            weights=_Holder(broken))


class _Holder(nn.Module):
    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight


def test_micro_batches_before_the_last_skip_the_ddp_all_reduce(synthetic, tmp_path):
    """Under DDP only the last micro-batch of a step synchronises gradients (a real gloo process group of one)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(nn.Linear(3, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        syncing: list[bool] = []

        def loss_of(batch):
            syncing.append(model.require_backward_grad_sync)
            return model(images_to_rgb(batch["image"]).mean(dim=(2, 3))).pow(2).mean()

        runtime = Runtime("cpu")
        fit(loss_of, lambda e: runtime.loader(synthetic, 4, shuffle=True, seed=0, epoch=e), total=3, runtime=runtime,
            optimizer=opt, accumulate=3, modules=[model])
    finally:
        dist.destroy_process_group()
    assert syncing == [False, False, True] * 3


def _pretext(name: str, data: DataInfo):
    seed_everything(0)
    cls = get_pretext_class(name)
    return cls(cls.Config(), EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), data)


def test_pretext_budget_accumulates_and_a_pretext_with_its_own_steps_refuses(synthetic, tmp_path):
    info = DataInfo("synthetic", 32, synthetic.num_classes)
    runtime = Runtime("cpu")
    store = CheckpointStore(tmp_path / "cache", "regression", "acc")
    summary = train_pretext(_pretext("regression", info), synthetic, runtime,
                            TrainBudget(steps=3, batch_size=8, accumulate=2), store, 0, Progress.disabled(),
                            log_every=1)
    assert summary.steps == 3 and summary.images == 3 * 2 * 8 and summary.epochs == 3 / 2  # 5 batches: 2 steps
    assert [entry["step"] for entry in summary.history] == [1, 2, 3]
    with pytest.raises(UsageError, match=r"--accumulate 2: pretext CGAN.*own optimisation steps"):
        train_pretext(_pretext("cgan", info), synthetic, runtime, TrainBudget(steps=1, batch_size=8, accumulate=2),
                      CheckpointStore(tmp_path / "cache", "cgan", "acc"), 0, Progress.disabled())
    with pytest.raises(UsageError, match=r"--accumulate 9: an epoch has only 5 batch"):
        train_pretext(_pretext("regression", info), synthetic, runtime,
                      TrainBudget(steps=1, batch_size=8, accumulate=9),
                      CheckpointStore(tmp_path / "cache", "regression", "too-many"), 0, Progress.disabled())


def test_accumulate_enters_the_checkpoint_hash_only_when_not_one(tmp_path, capsys):
    def unit(accumulate: int | None):
        exp = Experiment(variants=[VariantSpec("regression", "regression")],
                         datasets=[DatasetSpec("synthetic", subset=64, eval_subset=32)], out=tmp_path / "runs")
        if accumulate is not None:
            exp.budget.accumulate = accumulate
        (only,) = resolve_plan(exp, tmp_path / "cache").units
        return only

    default, one, two = unit(None), unit(1), unit(2)
    assert "accumulate" not in default.run_config["budget"]  # the hash of every earlier checkpoint is unchanged
    assert default.checkpoint_hash == one.checkpoint_hash
    assert two.checkpoint_hash != one.checkpoint_hash and two.run_config["budget"]["accumulate"] == 2

    # The flag and the experiment file's [budget] reach the same plan.
    common = ["run", "--pretext", "regression", "--subset", "64", "--eval-subset", "32", "--dry-run",
              "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--accumulate", "2"]) == 0
    assert f"train checkpoint {two.checkpoint_hash}" in capsys.readouterr().out
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text('[budget]\naccumulate = 2\n[datasets.synthetic]\nsubset = 64\neval_subset = 32\n'
                        '[protocols.linear]\n[variants.regression]\n')
    assert main(["run", "--config", str(exp_file), "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"train checkpoint {two.checkpoint_hash}" in capsys.readouterr().out
    exp_file.write_text('[budget]\naccumulate = 1.5\n[protocols.linear]\n[variants.regression]\n')
    assert main(["run", "--config", str(exp_file), "--dry-run"]) == 2
    assert "accumulate must be a positive integer" in capsys.readouterr().err
