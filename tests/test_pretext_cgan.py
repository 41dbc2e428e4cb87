"""The ``cgan`` pretext (pix2pix colorization, Treneska et al. 2022) on real CIFAR-10 images, CPU, real optimisation.

Every test runs for the paper's U-Net generator (``unet``) and for the generic tap U-Net decoder on the CLI default
encoder (``vgg_small``). Networks are narrowed (``width_mult``, ``ndf``) to keep the suite fast on a CPU; the
architecture, losses and optimisers are the plugin's own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from sslbench.checkpoints import CheckpointStore
from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.encoders.unet import UNetGenerator
from sslbench.errors import NonFiniteLossError
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.pretexts.cgan import CGAN, CGANConfig, PatchDiscriminator, TapUNetDecoder, default_d_layers
from sslbench.progress import Progress
from sslbench.registry import PRETEXTS
from sslbench.runtime import Runtime
from sslbench.trainer import load_trained, train_pretext

#: Narrow variants of each encoder, so a step takes a few milliseconds on a CPU.
ENCODERS = {"vgg_small": {"width_mult": 0.25}, "unet": {"width_mult": 0.125}}
SMALL = CGANConfig(ndf=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="train", subset=64, seed=0)


@pytest.fixture(scope="module")
def rgb(cifar) -> torch.Tensor:
    return torch.stack([cifar[i]["image"] for i in range(8)]).float() / 255.0


def build(encoder: str, seed: int = 0, config: CGANConfig = SMALL) -> CGAN:
    torch.manual_seed(seed)
    return CGAN(config, EncoderSpec(encoder, dict(ENCODERS[encoder]), 32), DataInfo("cifar10", 32, 10))


def train(pretext: CGAN, dataset, tmp_path: Path, steps: int, seed: int = 0, **kwargs):
    store = CheckpointStore(tmp_path / "cache", "cgan", f"test-{seed}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=16), store, seed,
                            Progress.disabled(), **kwargs)
    return summary, store


def test_registered_and_generator_choice() -> None:
    assert PRETEXTS.get("cgan") is CGAN
    unet, vgg = build("unet"), build("vgg_small")
    assert isinstance(unet.generator, UNetGenerator) and unet.generator.num_downs == 5  # log2(32)
    assert unet.encoder is unet.generator.encoder and unet.encoder.ngf == 8  # encoder options reach the generator
    assert isinstance(vgg.generator, TapUNetDecoder) and vgg.encoder is vgg.generator.encoder
    # 32x32 images get a 16x16 PatchGAN; the paper's 70x70 one from 128 pixels up
    assert default_d_layers(32) == 1 and default_d_layers(64) == 2 and default_d_layers(128) == 3
    assert default_d_layers(256) == 3
    assert PatchDiscriminator(n_layers=3).receptive_field == 70
    assert unet.discriminator.receptive_field == 16
    # the discriminator is conditioned on L: concat(L, ab) in, one logit per patch out
    assert unet.discriminator(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 14, 14)


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_training_logs_both_losses_reload_and_colorize(encoder: str, cifar, rgb: torch.Tensor,
                                                       tmp_path: Path) -> None:
    pretext = build(encoder)
    summary, store = train(pretext, cifar, tmp_path, steps=24, log_every=6)
    history = summary.history
    assert [h["step"] for h in history] == [6, 12, 18, 24]
    for entry in history:
        assert {"loss_G", "loss_D", "loss_G_gan", "loss_G_l1", "D_real", "D_fake"} <= set(entry)
        assert all(torch.isfinite(torch.tensor(v)) for v in entry.values())
        assert 0.0 < entry["D_real"] < 1.0 and 0.0 < entry["D_fake"] < 1.0
        assert entry["loss_G"] == pytest.approx(entry["loss_G_gan"] + 100.0 * entry["loss_G_l1"], rel=1e-5)
    assert history[-1]["loss_G_l1"] < 0.85 * history[0]["loss_G_l1"]
    assert store.has_final() and not store.partial.exists()

    out = pretext.colorize(rgb)
    assert out.shape == rgb.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (rgb_to_lab(out)[:, 0] - rgb_to_lab(rgb)[:, 0]).abs().max() < 1.0
    assert torch.equal(pretext.colorize(rgb), out)  # eval mode: deterministic
    assert pretext.generator.training  # colorize restored the training mode

    fresh = build(encoder, seed=1)
    assert not torch.equal(fresh.colorize(rgb), out)
    load_trained(fresh, store, Runtime("cpu"))
    assert torch.equal(fresh.colorize(rgb), out)
    # other sizes: the U-Net predicts at the nearest multiple of 32 and upsamples ab; L stays the input's
    big = F.interpolate(rgb, size=(48, 40), mode="bilinear", align_corners=False).clamp(0, 1)
    out_big = fresh.colorize(big)
    assert out_big.shape == big.shape
    assert (rgb_to_lab(out_big)[:, 0] - rgb_to_lab(big)[:, 0]).abs().max() < 1.0


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_same_seed_same_weights(encoder: str, cifar, tmp_path: Path) -> None:
    states = []
    for run, seed in enumerate((0, 0, 1)):
        pretext = build(encoder, seed=seed)
        torch.manual_seed(seed)  # dropout draws
        train(pretext, cifar, tmp_path / str(run), steps=3, seed=seed)
        states.append(pretext.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_segmentation_model_is_a_deep_copy_with_logits(encoder: str, rgb: torch.Tensor) -> None:
    pretext = build(encoder)
    before = pretext.colorize(rgb)
    model = pretext.segmentation_model(11)
    # the transferred body is the pretext's (buffers included), the output layer is new
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(),
                                                 pretext.encoder.state_dict().values()))
    assert model.head.conv.out_channels == 11
    logits = model(rgb)
    assert logits.shape == (8, 11, 32, 32)
    mine = {p.data_ptr() for p in pretext.parameters()}
    theirs = {p.data_ptr() for p in model.parameters()}
    assert not mine & theirs
    # a real fine-tuning step changes the copy and leaves the pretext alone
    target = torch.randint(0, 11, (8, 32, 32), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(rgb), target).backward()
    opt.step()
    assert not torch.equal(model(rgb), logits)
    assert torch.equal(pretext.colorize(rgb), before)


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_non_finite_loss_stops_and_keeps_good_checkpoint(encoder: str, cifar, tmp_path: Path) -> None:
    # A sane discriminator and an absurd generator lr: step 0 is finite and checkpointed, then the generator's
    # weights (~1e30, still finite) overflow its activations and the next loss is NaN.
    pretext = build(encoder, config=replace(SMALL, lr=1e30, lr_d=2e-4))
    with pytest.raises(NonFiniteLossError) as info:
        train(pretext, cifar, tmp_path, steps=20, checkpoint_every=1)
    message = str(info.value)
    assert "loss" in message and "not finite" in message and "last good checkpoint" in message
    store = CheckpointStore(tmp_path / "cache", "cgan", "test-0")
    assert str(store.partial) in message and store.partial.is_file() and not store.has_final()
    state = store.load(final=False)
    assert f"(step {state['step']})" in message and state["step"] >= 1
    assert f"at step {state['step']}" in message  # it broke right after the last checkpoint
    fresh = build(encoder, seed=1)
    fresh.load_state_dict(state["state_dict"])
    assert all(torch.isfinite(t).all() for t in fresh.state_dict().values() if t.is_floating_point())


def test_representation_is_the_generator_encoder_on_l(rgb: torch.Tensor) -> None:
    pretext = build("unet").eval()
    maps = pretext.representation()(rgb)
    direct = pretext.generator.encoder(normalize_l(rgb_to_lab(rgb)[:, :1]))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(maps, direct))
