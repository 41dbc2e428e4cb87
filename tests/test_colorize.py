"""``sslbench colorize``, trained checkpoints loaded back, and the colorization grid, on real photographs.

One real tiny run (the real CLI in a subprocess: regression and quantized colorizers, the supervised non-colorizer)
provides the checkpoints and records; CamVid's 480×360 PNGs, a grayscale copy, a 16-bit grayscale copy and a JPEG
with a rotating EXIF orientation are the photographs. skimage's rgb2lab is the independent reference for L.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage.color import rgb2lab

from sslbench.cli import main
from sslbench.colorize import colorization_panels, draw_colorization_grid
from sslbench.datasets import create_dataset
from sslbench.errors import SslbenchError, UsageError
from sslbench.pretrained import checkpoints_from_runs, load_pretext
from sslbench.records import load_records

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_PHOTOS = ("0016E5_07959.png", "0016E5_07961.png")
#: A JPEG's EXIF orientation 6: the stored image must be rotated 90° clockwise to be viewed upright.
ROTATE_90_CW = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real tiny run: three pretexts trained 3 steps on the synthetic set, evaluated by the colorization protocol
    (which skips the supervised pretext: it does not colorize) and kNN (which gives supervised an ok record)."""
    root = tmp_path_factory.mktemp("run")
    command = [sys.executable, "-m", "sslbench", "run", "--pretext", "regression,quantized,supervised",
               "--protocol", "colorization,knn", "--dataset", "synthetic", "--steps", "3", "--subset", "64",
               "--eval-subset", "32", "--set", "encoder.width_mult=0.25", "--out", str(root / "O"),
               "--cache-dir", str(root / "C"), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread) -> None:
    """Every test here runs on one torch thread (see the conftest fixture: the machine is shared)."""


@pytest.fixture(scope="module")
def records(run_dir) -> list[dict]:
    return load_records(run_dir / "O")


def _checkpoint_dir(run_dir: Path, pretext: str) -> Path:
    (final,) = sorted((run_dir / "C" / "checkpoints" / pretext).glob("*/final.pt"))
    return final.parent


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Colour CamVid PNGs, a grayscale PNG, a 16-bit grayscale PNG and an EXIF-rotated JPEG, in one folder."""
    folder = tmp_path_factory.mktemp("photos")
    out: dict[str, Path] = {}
    for name in CAMVID_PHOTOS:
        out[name] = folder / name
        shutil.copy(shared_data / "camvid" / "val" / name, out[name])
    source = Image.open(out[CAMVID_PHOTOS[0]]).convert("RGB")
    out["gray"] = folder / "gray.png"
    source.convert("L").save(out["gray"])
    out["gray16"] = folder / "gray16.png"
    luminance = np.asarray(source.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(luminance).save(out["gray16"])
    out["rotated"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    source.crop((0, 0, 400, 300)).save(out["rotated"], quality=95, exif=exif.tobytes())
    return out


def _upright_rgb(path: Path) -> np.ndarray:
    """The photo as a viewer shows it, float RGB in [0, 1] (16-bit gray scaled by 65535)."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode.startswith("I"):
        gray = np.asarray(image, dtype=np.float64) / 65535.0
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


# -- checkpoints back from disk ----------------------------------------------------------------------------------------
def test_load_pretext_from_folder_or_file_restores_the_trained_weights(run_dir):
    folder = _checkpoint_dir(run_dir, "regression")
    saved = torch.load(folder / "final.pt", map_location="cpu", weights_only=True)["state_dict"]
    by_folder, by_file = load_pretext(folder), load_pretext(folder / "final.pt")
    for pretext in (by_folder, by_file):
        state = pretext.state_dict()
        assert set(state) == set(saved)
        assert all(torch.equal(state[k], saved[k]) for k in saved if torch.is_tensor(saved[k]))
        assert not pretext.training
    config = json.loads((folder / "config.json").read_text())
    size = config.get("image_size", config["dataset_options"].get("image_size"))
    assert by_folder.data_info.image_size == size
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(by_folder.colorize(rgb), by_file.colorize(rgb))


def test_load_pretext_rebuilds_a_quantized_head_from_its_saved_bins(run_dir):
    """The quantized head only exists once its ab bins are known: they come from the checkpoint's extra state."""
    pretext = load_pretext(_checkpoint_dir(run_dir, "quantized"))
    saved = torch.load(_checkpoint_dir(run_dir, "quantized") / "final.pt", weights_only=True)["state_dict"]
    head = {k: v for k, v in pretext.state_dict().items() if torch.is_tensor(v) and k in saved}
    assert head and all(torch.equal(v, saved[k]) for k, v in head.items())
    assert pretext.colorize(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_load_pretext_errors_name_the_file(run_dir, tmp_path):
    with pytest.raises(UsageError, match=str(tmp_path / "missing")):
        load_pretext(tmp_path / "missing")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(_checkpoint_dir(run_dir, "regression") / "final.pt", folder / "final.pt")
    with pytest.raises(UsageError, match="config.json"):
        load_pretext(folder)
    shutil.copy(_checkpoint_dir(run_dir, "regression") / "config.json", folder / "config.json")
    (folder / "final.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match=str(folder / "final.pt")):
        load_pretext(folder)
    # A pickle that would run code (here: build a fractions.Fraction) is refused, not executed.
    import fractions

    torch.save({"state_dict": {}, "payload": fractions.Fraction(1, 3)}, folder / "final.pt")
    with pytest.raises(UsageError, match="cannot load.*nothing from it was run"):
        load_pretext(folder)
    # Real weights of another pretext: the config's pretext cannot take them.
    shutil.copy(_checkpoint_dir(run_dir, "quantized") / "final.pt", folder / "final.pt")
    with pytest.raises(SslbenchError, match="do not fit"):
        load_pretext(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="JSON"):
        load_pretext(folder)


def test_checkpoints_from_runs_maps_variants_to_the_lowest_seed(run_dir, records, tmp_path):
    found = checkpoints_from_runs(run_dir / "O")
    by_variant = {r.get("variant") or r["pretext"]: r for r in records if r["status"] == "ok"}
    assert set(found) == {"regression", "quantized", "supervised"}
    for variant, path in found.items():
        assert path == Path(by_variant[variant]["train"]["checkpoint"]) and path.name == "final.pt"
    # Another seed of regression whose checkpoint lies elsewhere: seed 0 still wins, whatever the path order.
    runs = tmp_path / "O"
    shutil.copytree(run_dir / "O", runs)
    original = Path(by_variant["regression"]["_path"])
    record = json.loads(original.read_text())
    record["seed"] = 7
    record["train"]["checkpoint"] = str(tmp_path / "elsewhere" / "final.pt")
    (runs / original.relative_to(run_dir / "O")).with_name("aaa_regression_seed7.json").write_text(json.dumps(record))
    assert checkpoints_from_runs(runs)["regression"] == found["regression"]


# -- sslbench colorize -------------------------------------------------------------------------------------------------
def test_colorize_keeps_size_orientation_and_lightness(run_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["colorize", str(photos[CAMVID_PHOTOS[0]]), str(photos["gray"]), str(photos["gray16"]),
               str(photos["rotated"]), "--checkpoint", str(_checkpoint_dir(run_dir, "regression")), "--out", str(out),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    for key in (CAMVID_PHOTOS[0], "gray", "gray16", "rotated"):
        source = _upright_rgb(photos[key])
        result = _read_png(out / f"{photos[key].stem}.png")
        assert result.shape == source.shape, key
        l_error = np.abs(rgb2lab(result)[..., 0] - rgb2lab(source)[..., 0])
        assert l_error.max() < 1.0 and l_error.mean() < 0.3, (key, l_error.max(), l_error.mean())
    assert _upright_rgb(photos["rotated"]).shape == (400, 300, 3)  # EXIF applied: portrait
    colour = rgb2lab(_read_png(out / f"{Path(CAMVID_PHOTOS[0]).stem}.png"))
    assert np.hypot(colour[..., 1], colour[..., 2]).mean() > 1.0  # it added colour to the gray


def test_colorize_ignores_the_input_colours(run_dir, photos, tmp_path):
    """A colour photo is made gray first: its output equals that of its own gray (L kept, ab = 0) version."""
    from sslbench.colorize import colorize_photo, read_photo
    from sslbench.colour import lab_to_rgb, rgb_to_lab

    pretext = load_pretext(_checkpoint_dir(run_dir, "regression"))
    rgb = read_photo(photos[CAMVID_PHOTOS[1]])
    lab = rgb_to_lab(rgb.unsqueeze(0))
    gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))[0].clamp(0, 1)
    assert (rgb - gray).abs().max() > 0.1
    assert torch.allclose(colorize_photo(pretext, rgb), colorize_photo(pretext, gray), atol=2e-3)


def test_colorize_a_folder_through_a_run_with_a_progress_bar(run_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["colorize", str(photos["gray"].parent), "--runs", str(run_dir / "O"), "--pretext", "quantized",
               "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    expected = {p.stem + ".png" for p in photos.values()}
    assert {p.name for p in out.iterdir()} == expected
    assert _read_png(out / f"{Path(CAMVID_PHOTOS[1]).stem}.png").shape == (360, 480, 3)


def test_colorize_usage_errors(run_dir, photos, tmp_path, capsys):
    photo = str(photos[CAMVID_PHOTOS[0]])
    supervised = str(_checkpoint_dir(run_dir, "supervised"))
    cases = [
        (["--checkpoint", supervised], "does not colorize"),
        (["--runs", str(run_dir / "O"), "--pretext", "supervised"], "does not colorize"),
        (["--runs", str(run_dir / "O"), "--pretext", "splitbrain"], "regression"),  # lists the valid variants
        (["--runs", str(run_dir / "O")], "--pretext"),
        (["--checkpoint", str(tmp_path / "nowhere")], str(tmp_path / "nowhere")),
    ]
    for extra, message in cases:
        assert main(["colorize", photo, *extra, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err, extra
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos["gray"], other / "gray.png")
    regression = ["--checkpoint", str(_checkpoint_dir(run_dir, "regression"))]
    assert main(["colorize", str(photos["gray"]), str(other / "gray.png"), *regression, "--out",
                 str(tmp_path / "o")]) == 2
    assert "both be written" in capsys.readouterr().err
    assert main(["colorize", str(other / "gray.png"), *regression, "--out", str(other)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["colorize", str(tmp_path / "absent.png"), *regression, "--out", str(tmp_path / "o")]) == 2
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(["colorize", str(broken), *regression, "--out", str(tmp_path / "o")]) == 2
    assert str(broken) in capsys.readouterr().err


# -- the grid ----------------------------------------------------------------------------------------------------------
def test_colorization_panels_hold_gray_each_colorizer_and_the_truth(run_dir, records):
    panels = colorization_panels(records, num_images=3)
    assert list(panels) == ["grayscale", "quantized", "regression", "ground truth"]
    record = next(r for r in records if r["pretext"] == "regression")
    plan = record.get("plan") or {}
    test = create_dataset("synthetic", split=plan.get("eval_split", "test"), image_size=32)
    truth = np.stack([test[i]["image"].permute(1, 2, 0).numpy() for i in range(3)]) / 255.0
    np.testing.assert_allclose(panels["ground truth"].permute(0, 2, 3, 1).numpy(), truth, atol=1e-6)
    gray = rgb2lab(panels["grayscale"].permute(0, 2, 3, 1).double().numpy())
    np.testing.assert_allclose(gray[..., 0], rgb2lab(truth)[..., 0], atol=0.5)
    assert np.abs(gray[..., 1:]).max() < 0.5
    pretext = load_pretext(Path(record["train"]["checkpoint"]))
    expected = pretext.colorize(torch.from_numpy(truth).permute(0, 3, 1, 2).float()).clamp(0, 1)
    assert torch.allclose(panels["regression"], expected, atol=1e-6)
    assert not torch.allclose(panels["regression"], panels["quantized"], atol=1e-3)


def test_draw_colorization_grid_writes_png_and_pdf(records, tmp_path):
    paths = draw_colorization_grid(records, tmp_path / "fig", num_images=2)
    assert paths == [tmp_path / "fig" / "grid.png", tmp_path / "fig" / "grid.pdf"]
    with Image.open(paths[0]) as image:
        width, height = image.size
    assert 1.5 < width / height < 3.0  # four columns of square images over two rows
    assert paths[1].read_bytes().startswith(b"%PDF")
    with pytest.raises(UsageError, match="colorizing"):
        draw_colorization_grid([r for r in records if r["pretext"] == "supervised"], tmp_path / "none")
