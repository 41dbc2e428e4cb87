"""sslbench.colour.lab against skimage.color (float64) on the sRGB cube, real photos and extreme Lab."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from sslbench.colour import (
    AB_GAMUT_RANGE,
    AB_SCALE,
    denormalize_ab,
    denormalize_l,
    lab_merge,
    lab_split,
    lab_to_rgb,
    normalize_ab,
    normalize_l,
    rgb_to_lab,
    rgb_uint8_to_lab,
)

TOL = 1e-3


def _as_image(colours: np.ndarray) -> torch.Tensor:
    """(M, 3) uint8 colours -> (1, 3, M, 1) tensor."""
    return torch.from_numpy(np.ascontiguousarray(colours.T))[None, :, :, None]


def _cube_sample() -> np.ndarray:
    """Stride-3 grid of the 8-bit cube (with 255), every colour of the dark corner, the 8 corners."""
    grid = np.unique(np.r_[np.arange(0, 256, 3), 255]).astype(np.uint8)
    dark = np.arange(0, 20, dtype=np.uint8)
    parts = [np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3) for v in (grid, dark)]
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=np.uint8)
    return np.concatenate([*parts, corners])


def _real_images(shared_data: Path) -> np.ndarray:
    """(N, H, W, 3) uint8: CIFAR-10 images and CamVid crops, all 32 x 32."""
    cifar = sorted((shared_data / "cifar10" / "test").glob("*/*.jpg"))[::97][:48]
    camvid = sorted((shared_data / "camvid" / "train").glob("*.png"))[:4]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in cifar]
    for path in camvid:
        full = np.asarray(Image.open(path).convert("RGB"))
        images += [full[y : y + 32, x : x + 32] for y in (0, 160, 320) for x in (0, 224, 440)]
    return np.stack(images)


UINT8_BACKENDS = ["numba", "torch"]  # the CPU kernel, and the torch path (the one CUDA runs)


@pytest.mark.parametrize("backend", UINT8_BACKENDS)
def test_rgb_to_lab_matches_skimage_on_cube_sample(backend):
    colours = _cube_sample()
    reference = color.rgb2lab(colours[None].astype(np.float64) / 255.0)[0]
    lab = rgb_uint8_to_lab(_as_image(colours), backend=backend)[0, :, :, 0].T.double().numpy()
    assert np.abs(lab - reference).max() <= TOL
    float_lab = rgb_to_lab(_as_image(colours).float() / 255.0)[0, :, :, 0].T.double().numpy()
    assert np.abs(float_lab - reference).max() <= TOL
    corners = colours[-8:]
    assert np.abs(lab[-8:] - color.rgb2lab(corners[None] / 255.0)[0]).max() <= TOL


def test_rgb_to_lab_float64_is_skimage_to_rounding():
    colours = _cube_sample()
    rgb = _as_image(colours).double() / 255.0
    reference = color.rgb2lab(colours[None] / 255.0)[0]
    lab = rgb_to_lab(rgb)[0, :, :, 0].T.numpy()
    # Only exp/log vs pow and the formulas' own discontinuity at the branch points (3.3e-7 in f,
    # i.e. up to 1.7e-4 in a or b where the two channels take different branches) differ.
    assert np.abs(lab - reference).max() < 2.5e-4


@pytest.mark.parametrize("backend", UINT8_BACKENDS)
def test_rgb_to_lab_matches_skimage_on_real_images(shared_data, backend):
    images = _real_images(shared_data)
    reference = np.stack([color.rgb2lab(im) for im in images])
    lab = rgb_uint8_to_lab(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), backend=backend)
    assert np.abs(lab.permute(0, 2, 3, 1).double().numpy() - reference).max() <= TOL
    back = lab_to_rgb(lab).permute(0, 2, 3, 1).double().numpy()
    assert np.abs(back - images / 255.0).max() <= TOL


def test_lab_to_rgb_matches_skimage_inside_and_outside_the_gamut():
    colours = _cube_sample()
    lab = color.rgb2lab(colours[None] / 255.0)[0]
    levels = np.array([0.0, 0.5, 1.0, 8.0, 25.0, 50.0, 75.0, 99.0, 100.0])
    ab = np.linspace(-200.0, 200.0, 41)
    extreme = np.stack(np.meshgrid(levels, ab, ab, indexing="ij"), -1).reshape(-1, 3)
    values = np.concatenate([lab, extreme])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about clipped negative Z
        reference = color.lab2rgb(values[None])[0]
    got = lab_to_rgb(torch.from_numpy(values.T.copy()).float()[None, :, :, None])[0, :, :, 0].T.double().numpy()
    assert np.isfinite(got).all()
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert np.abs(got - reference).max() <= TOL
    assert np.abs(got[: len(colours)] - colours / 255.0).max() <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    colours = _cube_sample()[::7]
    rgb = _as_image(colours).float() / 255.0
    lab = rgb_to_lab(rgb.to(dtype))
    assert lab.dtype == dtype
    # 16-bit rounding of the input and output, computed in float32 in between.
    assert (lab.float() - rgb_to_lab(rgb.to(dtype).float())).abs().max() < 0.5
    back = lab_to_rgb(lab)
    assert back.dtype == dtype and torch.isfinite(back).all()


def test_extreme_lab_gives_finite_clipped_rgb_and_gradients():
    values = torch.tensor(
        [[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 200.0, -200.0], [100.0, -200.0, 200.0], [-5.0, 0.0, 0.0],
         [110.0, 0.0, 0.0], [50.0, 200.0, 200.0], [0.0, -200.0, -200.0]]
    ).T[None, :, :, None].requires_grad_(True)
    rgb = lab_to_rgb(values)
    assert torch.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1
    rgb.sum().backward()
    assert torch.isfinite(values.grad).all()
    with torch.no_grad():
        assert torch.equal(rgb, lab_to_rgb(values))
    black = torch.zeros(1, 3, 2, 2, requires_grad=True)
    lab = rgb_to_lab(black)
    lab.sum().backward()
    assert torch.isfinite(black.grad).all()
    assert lab.detach().abs().max() < 1e-4
    # Gradients agree with finite differences of the (in-place, no-grad) forward pass.
    rgb = torch.rand(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb,))
    lab = (torch.rand(1, 3, 3, 3, dtype=torch.float64) * torch.tensor([90.0, 60.0, 60.0]).view(1, 3, 1, 1)
           + torch.tensor([5.0, -30.0, -30.0]).view(1, 3, 1, 1)).requires_grad_(True)
    assert torch.autograd.gradcheck(lab_to_rgb, (lab,))


def test_uint8_helper_equals_float_path():
    colours = torch.from_numpy(_cube_sample()[::5].T.copy())[None, :, :, None]
    lab = rgb_uint8_to_lab(colours, backend="torch")
    assert torch.allclose(lab, rgb_to_lab(colours.float() / 255.0), rtol=0, atol=1e-4)
    with pytest.raises(TypeError):
        rgb_uint8_to_lab(colours.float())


def test_uint8_kernel_matches_skimage_over_the_whole_cube():
    # Every 8-bit colour.  The kernel takes Lab's f(t) branch exactly as skimage does (the torch path
    # blends the branches, which costs up to 2e-4 in a); measured 1.5e-4 in a, 3e-5 in L, 7e-5 in b.
    values = np.arange(256, dtype=np.uint8)
    cube = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    lab = rgb_uint8_to_lab(_as_image(cube), backend="numba")[0, :, :, 0].T.numpy()
    for part in np.array_split(np.arange(len(cube)), 8):
        reference = color.rgb2lab(cube[part][None].astype(np.float64) / 255.0)[0]
        assert np.abs(lab[part] - reference).max() <= 2e-4


def test_uint8_backends_agree_on_real_images(shared_data):
    images = torch.from_numpy(_real_images(shared_data)).permute(0, 3, 1, 2)  # not contiguous
    kernel = rgb_uint8_to_lab(images, backend="numba")
    assert kernel.dtype == torch.float32 and kernel.shape == images.shape
    assert (kernel - rgb_uint8_to_lab(images, backend="torch")).abs().max() <= 3e-4
    assert torch.equal(rgb_uint8_to_lab(images), kernel)  # "auto" on CPU is the kernel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uint8_kernel_casts_to_16_bit(dtype):
    colours = _as_image(_cube_sample()[::7])
    lab = rgb_uint8_to_lab(colours, dtype=dtype)
    assert lab.dtype == dtype
    assert torch.equal(lab, rgb_uint8_to_lab(colours, backend="numba").to(dtype))


def test_uint8_kernel_edge_cases():
    assert rgb_uint8_to_lab(torch.zeros(0, 3, 4, 4, dtype=torch.uint8)).shape == (0, 3, 4, 4)
    odd = torch.randint(0, 256, (3, 3, 37, 41), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert (rgb_uint8_to_lab(odd, backend="numba") - rgb_uint8_to_lab(odd, backend="torch")).abs().max() <= 3e-4
    float64 = rgb_uint8_to_lab(odd, dtype=torch.float64)  # "auto" takes the torch path for float64
    assert float64.dtype == torch.float64
    with pytest.raises(ValueError, match="float32"):
        rgb_uint8_to_lab(odd, dtype=torch.float64, backend="numba")
    with pytest.raises(ValueError, match="backend must be one of"):
        rgb_uint8_to_lab(odd, backend="fast")


def test_uint8_kernel_keeps_torch_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rgb_uint8_to_lab(torch.zeros(2, 3, 40, 40, dtype=torch.uint8), backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_gamut_constants_match_the_cube():
    values = np.arange(256, dtype=np.uint8)
    cube = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    ab = rgb_uint8_to_lab(_as_image(cube))[0, 1:, :, 0]
    (a_lo, a_hi), (b_lo, b_hi) = AB_GAMUT_RANGE
    assert abs(ab[0].min().item() - a_lo) < 0.05 and abs(ab[0].max().item() - a_hi) < 0.05
    assert abs(ab[1].min().item() - b_lo) < 0.05 and abs(ab[1].max().item() - b_hi) < 0.05
    assert ab.abs().max() < AB_SCALE


def test_normalisation_helpers():
    l_channel = torch.tensor([0.0, 25.0, 50.0, 100.0])
    assert torch.allclose(normalize_l(l_channel), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    assert torch.allclose(denormalize_l(normalize_l(l_channel)), l_channel)
    ab = torch.tensor([-110.0, 0.0, 55.0])
    assert torch.allclose(normalize_ab(ab), torch.tensor([-1.0, 0.0, 0.5]))
    assert torch.allclose(denormalize_ab(normalize_ab(ab)), ab)
    lab = torch.randn(2, 3, 4, 5)
    l_part, ab_part = lab_split(lab)
    assert l_part.shape == (2, 1, 4, 5) and ab_part.shape == (2, 2, 4, 5)
    assert torch.equal(lab_merge(l_part, ab_part), lab)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        rgb_to_lab(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        lab_to_rgb(torch.rand(1, 2, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    colours = _as_image(_cube_sample())
    assert (rgb_uint8_to_lab(colours.cuda()).cpu() - rgb_uint8_to_lab(colours)).abs().max() < 3e-4
    with pytest.raises(ValueError, match="CPU only"):
        rgb_uint8_to_lab(colours.cuda(), backend="numba")
    rgb = colours.float() / 255.0
    lab = rgb_to_lab(rgb)
    lab_gpu = rgb_to_lab(rgb.cuda())
    assert lab_gpu.device.type == "cuda"
    assert (lab_gpu.cpu() - lab).abs().max() < 1e-3
    assert (lab_to_rgb(lab.cuda()).cpu() - lab_to_rgb(lab)).abs().max() < 1e-4


def test_autocast_does_not_lower_precision():
    rgb = _as_image(_cube_sample()[::11]).float() / 255.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(rgb)
        back = lab_to_rgb(lab)
    assert lab.dtype == torch.float32 and back.dtype == torch.float32
    assert torch.equal(lab, rgb_to_lab(rgb)) and torch.equal(back, lab_to_rgb(lab))
