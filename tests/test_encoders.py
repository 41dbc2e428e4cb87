"""The built-in encoders against the encoder contract, and the pix2pix U-Net generator.

Every registered encoder is created through the registry (the ``timm/*`` family through two members, a ResNet and a
ConvNeXt) and checked for: declared taps (``check_taps``) at 32x32 (small-input variant) and at a larger size
(normal variant), ``in_chans=2``, ``width_mult=0.5``, gradient flow to every parameter, seeded initialisation,
eval-mode determinism, a recorded ``config`` that recreates the encoder, and a ``TypeError`` naming an unknown option.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
from torch import nn

from sslbench.encoders.base import Encoder, check_taps
from sslbench.registry import ENCODERS

TIMM_MEMBERS = ("timm/resnet18", "timm/convnext_atto")
BUILTINS = {"alexnet_bn", "vgg16_bn", "vgg_small", "unet", "timm/*"}
#: Size of the normal-variant check (small-input variants are picked at <= 64); alexnet_bn at its ImageNet size once.
LARGE_SIZE = {"alexnet_bn": 224}
#: Encoders whose widths are fixed (width_mult != 1 is an error).
FIXED_WIDTH_PREFIXES = ("timm/",)
#: Parameters that are frozen by design and receive no gradient (none so far).
FROZEN: dict[str, set[str]] = {}
#: Encoders where some gradients are exactly zero at initialisation: timm's ResNets zero-initialise the last norm of
#: each residual branch (``zero_init_last``), which blocks the gradient to the branch's earlier layers until it moves.
ZERO_GRAD_AT_INIT = {"timm/resnet18"}


def _encoder_names() -> list[str]:
    names: list[str] = []
    for name in ENCODERS.names():
        if name == "timm/*":
            names.extend(TIMM_MEMBERS)
        elif not name.endswith("/*"):
            names.append(name)
    return names


ENCODER_NAMES = _encoder_names()


@lru_cache(maxsize=None)
def _prototype(name: str) -> Encoder:
    torch.manual_seed(0)
    return ENCODERS.create(name, in_chans=1, image_size=32)


def _small(name: str) -> Encoder:
    """A fresh copy of ``name`` built for 32x32 single-channel input (built once per session: timm builds are slow)."""
    return copy.deepcopy(_prototype(name))


def _strides(encoder: Encoder) -> list[int]:
    return [tap.stride for tap in encoder.taps]


def test_builtins_are_registered() -> None:
    assert BUILTINS <= set(ENCODERS.names())


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_taps_small_input(name: str) -> None:
    encoder = _small(name)
    assert isinstance(encoder, Encoder)
    assert encoder.in_chans == 1
    assert encoder.taps and len(set(encoder.tap_names)) == len(encoder.taps)
    assert _strides(encoder) == sorted(_strides(encoder)), "taps must be ordered shallow to deep"
    assert encoder.out_channels == encoder.taps[-1].channels
    maps = check_taps(encoder, 32)
    assert min(m.shape[-1] for m in maps) >= 1
    config = encoder.config
    assert isinstance(config, dict)
    assert {"in_chans": 1, "image_size": 32, "width_mult": 1.0}.items() <= config.items()
    if name != "unet" and "small_input" in config:
        assert config["small_input"] is True


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_taps_large_input(name: str) -> None:
    size = LARGE_SIZE.get(name, 128)
    encoder = ENCODERS.create(name, in_chans=1, image_size=size)
    check_taps(encoder, size)
    if "small_input" in encoder.config and name != "unet":
        assert encoder.config["small_input"] is False


def test_expected_taps() -> None:
    """The documented tap layouts (name, channels, stride) of the built-ins, small and normal variants."""

    def layout(name: str, size: int, **options: object) -> list[tuple[str, int, int]]:
        encoder = ENCODERS.create(name, image_size=size, **options)
        return [(t.name, t.channels, t.stride) for t in encoder.taps]

    assert layout("vgg_small", 32) == [("stage1", 32, 1), ("stage2", 64, 2), ("stage3", 128, 4), ("stage4", 256, 8)]
    assert layout("vgg_small", 224) == [("stage1", 32, 2), ("stage2", 64, 4), ("stage3", 128, 8), ("stage4", 256, 16)]
    vgg16 = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
    assert layout("vgg16_bn", 224) == list(zip(vgg16, [64, 128, 256, 512, 512], [1, 2, 4, 8, 16]))
    assert layout("vgg16_bn", 32) == list(zip(vgg16, [64, 128, 256, 512, 512], [1, 2, 4, 8, 8]))
    alex = [f"conv{i}" for i in range(1, 6)]
    assert layout("alexnet_bn", 224) == list(zip(alex, [96, 256, 384, 384, 256], [4, 8, 16, 16, 16]))
    assert layout("alexnet_bn", 32) == list(zip(alex, [96, 256, 384, 384, 256], [1, 2, 4, 4, 4]))
    downs = [f"down{i}" for i in range(1, 6)]
    assert layout("unet", 32) == list(zip(downs, [64, 128, 256, 512, 512], [2, 4, 8, 16, 32]))
    resnet = ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert layout("timm/resnet18", 32) == list(zip(resnet, [64, 64, 128, 256, 512], [1, 1, 2, 4, 8]))
    assert layout("timm/resnet18", 128) == list(zip(resnet, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]))
    convnext = [f"stages_{i}" for i in range(4)]
    assert layout("timm/convnext_atto", 32) == list(zip(convnext, [40, 80, 160, 320], [1, 2, 4, 8]))
    assert layout("timm/convnext_atto", 128) == list(zip(convnext, [40, 80, 160, 320], [4, 8, 16, 32]))
    assert layout("timm/resnet18", 32, out_indices=(2, 4)) == [("layer2", 128, 2), ("layer4", 512, 8)]


@pytest.mark.parametrize(
    ("name", "size", "small_input"),
    [
        ("vgg_small", 32, False),
        ("vgg16_bn", 64, False),
        ("timm/resnet18", 128, True),
        ("timm/convnext_atto", 64, False),
    ],
)
def test_small_input_override(name: str, size: int, small_input: bool) -> None:
    auto = ENCODERS.create(name, image_size=size)
    forced = ENCODERS.create(name, image_size=size, small_input=small_input)
    assert forced.config["small_input"] is small_input
    assert _strides(forced) != _strides(auto)
    check_taps(forced, size)


def test_timm_small_input_unsupported_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="small_input=False"):
        ENCODERS.create("timm/dla46_c", image_size=32)
    check_taps(ENCODERS.create("timm/dla46_c", image_size=32, small_input=False), 32)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_two_input_channels(name: str) -> None:
    encoder = ENCODERS.create(name, in_chans=2, image_size=32)
    assert encoder.in_chans == 2 and encoder.config["in_chans"] == 2
    maps = check_taps(encoder, 32)
    one = _small(name)
    assert [m.shape[1] for m in maps] == [t.channels for t in one.taps]


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_width_mult_half(name: str) -> None:
    if name.startswith(FIXED_WIDTH_PREFIXES):
        with pytest.raises(ValueError, match="width_mult"):
            ENCODERS.create(name, image_size=32, width_mult=0.5)
        return
    full = _small(name)
    half = ENCODERS.create(name, image_size=32, width_mult=0.5)
    assert half.config["width_mult"] == 0.5
    assert [t.channels * 2 for t in half.taps] == [t.channels for t in full.taps]
    assert [t.stride for t in half.taps] == [t.stride for t in full.taps]
    check_taps(half, 32)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    """The deepest tap alone reaches every parameter (so a loss summed over all taps does too)."""
    encoder = _small(name).train()
    frozen = FROZEN.get(name, set())
    torch.manual_seed(0)
    maps = encoder(torch.randn(2, 1, 32, 32))
    assert all(m.requires_grad for m in maps), "every tap must be differentiable"
    maps[-1].square().mean().backward()
    for pname, param in encoder.named_parameters():
        if pname in frozen:
            continue
        assert param.requires_grad, pname
        assert param.grad is not None, f"{pname} gets no gradient from the deepest tap"
        assert torch.isfinite(param.grad).all(), pname
        if name not in ZERO_GRAD_AT_INIT:
            assert param.grad.abs().sum() > 0, f"{pname} gets an all-zero gradient"


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_seeded_init_is_reproducible(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return ENCODERS.create(name, image_size=32).state_dict()

    first, second, other = build(0), build(0), build(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_eval_mode_is_deterministic(name: str) -> None:
    encoder = _small(name)
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    x_before = x.clone()
    encoder.train()
    encoder(x)  # move the batch-norm statistics away from their initial values
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(x), encoder(x)
        single = encoder(x[:1])
    assert torch.equal(x, x_before), "forward must not modify its input"
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.allclose(a[:1], s, atol=1e-5) for a, s in zip(first, single)), "eval output depends on the batch"


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_config_recreates_the_encoder(name: str) -> None:
    encoder = _small(name)
    again = ENCODERS.create(name, **encoder.config)
    assert again.taps == encoder.taps
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in encoder.state_dict().items()}


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_unknown_option_is_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match="bogus_option"):
        ENCODERS.create(name, image_size=32, bogus_option=3)


def test_timm_refuses_pretrained_weights() -> None:
    with pytest.raises(TypeError, match="pretrained"):
        ENCODERS.create("timm/resnet18", image_size=32, pretrained=True)


def test_invalid_values_are_value_errors() -> None:
    with pytest.raises(ValueError, match="timm has no model"):
        ENCODERS.create("timm/resnet_does_not_exist", image_size=32)
    with pytest.raises(ValueError, match="norm"):
        ENCODERS.create("unet", image_size=32, norm="layer")
    with pytest.raises(ValueError, match="groups"):
        ENCODERS.create("alexnet_bn", image_size=32, groups=3)
    with pytest.raises(ValueError, match="image_size"):
        ENCODERS.create("vgg16_bn", image_size=8, small_input=False)


def test_alexnet_groups_and_split_brain_halves() -> None:
    dense = ENCODERS.create("alexnet_bn", image_size=32, groups=1)
    grouped = ENCODERS.create("alexnet_bn", image_size=32)
    assert grouped.conv2.conv.groups == 2 and dense.conv2.conv.groups == 1
    assert sum(p.numel() for p in dense.parameters()) > sum(p.numel() for p in grouped.parameters())
    l_half = ENCODERS.create("alexnet_bn", in_chans=1, image_size=32, width_mult=0.5)
    ab_half = ENCODERS.create("alexnet_bn", in_chans=2, image_size=32, width_mult=0.5)
    assert [t.channels for t in l_half.taps] == [48, 128, 192, 192, 128] == [t.channels for t in ab_half.taps]


# -- the pix2pix U-Net generator -------------------------------------------------------------------------------------


def _generator(**kwargs: object) -> nn.Module:
    from sslbench.encoders.unet import UNetGenerator

    return UNetGenerator(**kwargs)


@pytest.mark.parametrize(("size", "num_downs", "batch"), [(32, 5, 2), (64, 6, 2), (128, 7, 2), (256, 8, 1)])
def test_generator_output(size: int, num_downs: int, batch: int) -> None:
    from sslbench.encoders.unet import UNetEncoder

    torch.manual_seed(0)
    generator = _generator(in_chans=1, out_chans=2, image_size=size)
    assert generator.num_downs == num_downs
    assert isinstance(generator.encoder, UNetEncoder) and isinstance(generator.encoder, Encoder)
    assert generator.encoder.taps[-1].stride == size
    check_taps(generator.encoder, size, batch=1)
    x = torch.randn(batch, 1, size, size)
    for mode in (True, False):
        generator.train(mode)
        with torch.no_grad():
            out = generator(x)
        assert out.shape == (batch, 2, size, size)
        assert out.abs().max() <= 1.0


def test_generator_matches_pix2pix_unet_256() -> None:
    """pix2pix's ``unet_256`` (3 in, 3 out, ngf 64, batch norm) has 54.414 M parameters and 3 dropout layers."""
    with torch.device("meta"):
        generator = _generator(in_chans=3, out_chans=3, image_size=256)
    assert sum(p.numel() for p in generator.parameters()) == 54_413_955
    assert [t.channels for t in generator.encoder.taps] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.Dropout) for m in generator.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in _generator(image_size=128).modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in _generator(image_size=32).modules()) == 1
    assert sum(isinstance(m, nn.Dropout) for m in _generator(image_size=32, dropout=0.0).modules()) == 0


def test_generator_pix2pix_init() -> None:
    torch.manual_seed(0)
    generator = _generator(image_size=64)
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    conv = torch.cat([m.weight.flatten() for m in convs])
    bn = torch.cat([m.weight for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv.std().item() - 0.02) < 1e-3 and abs(conv.mean().item()) < 1e-3
    assert abs(bn.mean().item() - 1.0) < 5e-3 and abs(bn.std().item() - 0.02) < 5e-3


def test_generator_replace_head() -> None:
    torch.manual_seed(0)
    generator = _generator(image_size=32)
    encoder_params = {k: v.detach().clone() for k, v in generator.encoder.named_parameters()}
    generator.replace_head(5)
    assert generator.out_chans == 5 and generator.final_activation is None
    out = generator(torch.randn(2, 1, 32, 32) * 50)
    assert out.shape == (2, 5, 32, 32)
    assert out.abs().max() > 1.0, "no tanh after replace_head(final_activation=None)"
    assert all(torch.equal(v, dict(generator.encoder.named_parameters())[k]) for k, v in encoder_params.items())
    generator.replace_head(3, final_activation="tanh")
    assert generator(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_generator_uses_every_skip() -> None:
    torch.manual_seed(0)
    generator = _generator(image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = generator.encoder(x)
        reference = generator.decode(features)
        assert torch.equal(reference, generator(x))
        for level in range(len(features)):
            changed = [torch.zeros_like(f) if i == level else f for i, f in enumerate(features)]
            assert not torch.allclose(generator.decode(changed), reference), f"down{level + 1} is not used"


def test_generator_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    generator = _generator(image_size=32).train()
    generator(torch.randn(2, 1, 32, 32)).square().mean().backward()
    missing = [n for n, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_generator_size_errors() -> None:
    with pytest.raises(ValueError, match="num_downs <= 5"):
        _generator(image_size=224, num_downs=7)
    generator = _generator(image_size=224)  # 224 = 7 * 2**5: five downs by default, innermost 7x7
    assert generator.num_downs == 5 and ENCODERS.create("unet", image_size=224).config["num_downs"] == 5
    assert generator(torch.randn(1, 1, 224, 224)).shape == (1, 2, 224, 224)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*num_downs"):
        _generator(image_size=32)(torch.randn(1, 1, 48, 48))
    with pytest.raises(ValueError, match="final_activation"):
        _generator(image_size=32, final_activation="sigmoid")
