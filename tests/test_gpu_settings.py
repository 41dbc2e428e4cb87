"""GPU settings exercised on the CPU, where torch 2.x runs them too: bf16 autocast, channels_last and torch.compile
train the same pretext as the fp32 eager path does, to the tolerance each one allows."""

from __future__ import annotations

import copy

import pytest
import torch

from sslbench.datasets import create_dataset
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.pretexts.regression import Regression, RegressionConfig
from sslbench.runtime import Runtime, seed_everything

SPEC = EncoderSpec("vgg_small", {"width_mult": 0.25}, 32)
INFO = DataInfo("synthetic", 32, 8)


@pytest.fixture(scope="module")
def batches():
    data = create_dataset("synthetic", split="train", subset=48)
    loader = Runtime("cpu").loader(data, 16, shuffle=True, seed=0)
    return [dict(batch) for batch in loader]


def _train(runtime: Runtime, batches, template: Regression) -> tuple[list[float], Regression]:
    pretext = copy.deepcopy(template)
    pretext.setup(runtime)
    pretext.train()
    losses = [pretext.training_step(runtime.to_device(batch), runtime)["loss"] for batch in batches]
    return losses, pretext


@pytest.fixture(scope="module")
def template() -> Regression:
    seed_everything(0)
    return Regression(RegressionConfig(), SPEC, INFO)


def test_bf16_autocast_runs_the_encoder_in_bf16_and_tracks_fp32(batches, template, one_thread):
    fp32_losses, fp32 = _train(Runtime("cpu", "fp32"), batches, template)
    runtime = Runtime("cpu", "bf16")
    bf16_losses, bf16 = _train(runtime, batches, template)
    x = torch.randn(2, 1, 32, 32)
    with runtime.autocast():
        assert bf16.encoder(x)[-1].dtype == torch.bfloat16
    assert fp32.encoder(x)[-1].dtype == torch.float32
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], rel=0.02)  # bf16 keeps 8 bits of mantissa
    assert bf16_losses != fp32_losses
    changed = any(not torch.equal(a, b) for a, b in zip(bf16.parameters(), template.parameters()))
    assert changed and all(torch.isfinite(p).all() for p in bf16.parameters())


def test_channels_last_lays_out_weights_and_batches_nhwc_and_trains_the_same(batches, template, one_thread):
    eager_losses, _ = _train(Runtime("cpu"), batches, template)
    runtime = Runtime("cpu", channels_last=True)
    nhwc_losses, nhwc = _train(runtime, batches, template)
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert runtime.to_device(batches[0])["image"].is_contiguous(memory_format=torch.channels_last)
    # The first loss is a forward pass of the same weights: equal up to the convolutions' summation order. Later ones
    # follow Adam steps, which normalise (and so magnify) tiny gradient differences.
    assert nhwc_losses[0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert nhwc_losses == pytest.approx(eager_losses, rel=2e-3)


def test_compile_trains_the_same_as_eager(batches, template, one_thread):
    eager_losses, eager = _train(Runtime("cpu"), batches, template)
    compiled_losses, compiled = _train(Runtime("cpu", compile=True), batches, template)
    assert type(compiled.train_model).__name__ == "OptimizedModule"
    assert compiled_losses[0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-3)
    # The two runs' weight updates agree to 1% of their size (Adam's normalised steps magnify the last-bit
    # differences of reordered sums in the weights that barely moved).
    start = torch.cat([p.detach().flatten() for p in template.parameters()])
    eager_step = torch.cat([p.detach().flatten() for p in eager.parameters()]) - start
    compiled_step = torch.cat([p.detach().flatten() for p in compiled.parameters()]) - start
    assert (compiled_step - eager_step).norm() <= 0.01 * eager_step.norm()


def test_tf32_needs_cuda():
    with pytest.raises(UsageError, match="tf32 is a CUDA setting"):
        Runtime("cpu", "tf32")


def test_settings_are_recorded_not_hashed(tmp_path):
    from sslbench.experiment import Experiment, VariantSpec
    from sslbench.plan import resolve_plan

    plain = Experiment(variants=[VariantSpec("regression", "regression")])
    fast = Experiment(variants=[VariantSpec("regression", "regression")], channels_last=True, compile=True)
    assert resolve_plan(plain, tmp_path).units[0].checkpoint_hash == \
        resolve_plan(fast, tmp_path).units[0].checkpoint_hash
    described = Runtime("cpu", channels_last=True, compile=True).describe()
    assert described["channels_last"] is True and described["compile"] is True
