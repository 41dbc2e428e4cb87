"""``jigsaw`` (Noroozi & Favaro 2016) on real CIFAR-10 images: the permutation set against the paper's Algorithm 1 and
Table 3 (recomputed independently with itertools), tiles that reassemble into the crop, learning through the real
trainer, the stored permutation set, RGB input and the encoder's taps, determinism, and the small-tile check."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sslbench.checkpoints import CheckpointStore
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.pretexts.jigsaw import (GRID, Jigsaw, JigsawConfig, permutation_set, sample_puzzles, standardize)
from sslbench.progress import Progress
from sslbench.registry import PRETEXTS
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import load_trained, train_pretext

SPEC = EncoderSpec("vgg_small", {"width_mult": 0.5}, 32)
INFO = DataInfo("cifar10", 32, 10)
#: A small head and permutation set keep the tests fast; the defaults are checked where they matter.
SMALL = {"permutations": 10, "tile_features": 64, "hidden": 256}
#: No gap, no jitter, no gray, no gains: tiles are exactly the cells of the crop.
PLAIN = {"tile_fraction": 1.0, "channel_jitter": 0, "colour_jitter": 0.0, "gray_prob": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="test", subset=64)


def _rgb(dataset, n: int) -> torch.Tensor:
    return images_to_rgb(torch.stack([dataset[i]["image"] for i in range(n)]))


def _hamming(p: tuple[int, ...], q: tuple[int, ...]) -> int:
    return sum(a != b for a, b in zip(p, q))


def _train(dataset, tmp: Path, seed: int, steps: int, batch_size: int, **options):
    seed_everything(seed)
    pretext = Jigsaw(JigsawConfig(**{**SMALL, **options}), SPEC, INFO)
    store = CheckpointStore(tmp, "jigsaw", f"s{seed}-{steps}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=batch_size),
                            store, seed, Progress.disabled(), log_every=1)
    return pretext, store, summary


def test_registered() -> None:
    assert PRETEXTS.get("jigsaw") is Jigsaw
    assert not Jigsaw(JigsawConfig(**SMALL), SPEC, INFO).can_colorize


def test_default_set_has_the_papers_hamming_distances() -> None:
    """The default 1000 permutations: distinct permutations of the 9 tiles, minimal Hamming distance 2 and mean 8.00
    over all pairs, the figures of the paper's Table 3 for its maximal-distance set of 1000."""
    rows = [tuple(int(v) for v in row) for row in permutation_set(1000, 0)]
    assert len(rows) == 1000 and len(set(rows)) == 1000
    assert all(sorted(row) == list(range(GRID * GRID)) for row in rows)
    distances = [_hamming(p, q) for p, q in itertools.combinations(rows, 2)]
    assert min(distances) == 2
    assert abs(sum(distances) / len(distances) - 8.00) < 0.01
    # Random permutations have mean distance 8 (9 positions, each equal with chance 1/9); the greedy set is above it.
    assert sum(distances) / len(distances) > 8.0


def test_set_is_greedy_max_mean_hamming_and_deterministic() -> None:
    """Each permutation after the first has, among all 9! permutations not yet chosen, the largest summed Hamming
    distance to those before it (Algorithm 1), checked by brute force over itertools.permutations."""
    chosen = permutation_set(6, 3)
    everything = np.array(list(itertools.permutations(range(GRID * GRID))))
    for k in range(1, len(chosen)):
        summed = sum((everything != chosen[j]).sum(axis=1) for j in range(k))
        already = np.zeros(len(everything), dtype=bool)
        for j in range(k):
            already |= (everything == chosen[j]).all(axis=1)
        assert summed[(everything == chosen[k]).all(axis=1)].item() == summed[~already].max(), k
    assert np.array_equal(permutation_set(6, 3), chosen)
    assert np.array_equal(permutation_set(4, 3), chosen[:4])
    assert not np.array_equal(permutation_set(6, 4), chosen)
    with pytest.raises(UsageError, match="jigsaw.permutations"):
        permutation_set(1, 0)


def test_tiles_reassemble_into_the_crop(images) -> None:
    rgb = _rgb(images, 8)
    perms = torch.from_numpy(permutation_set(100, 0))
    torch.manual_seed(0)
    puzzles = sample_puzzles(rgb, perms, JigsawConfig(**PLAIN))
    cell = puzzles.cell
    assert cell == 10 and puzzles.tile == 10 and puzzles.tiles.shape == (8, 9, 3, 10, 10)
    assert torch.equal(puzzles.order, perms[puzzles.labels])
    inverse = torch.argsort(puzzles.order, dim=1)
    unshuffled = puzzles.tiles[torch.arange(8)[:, None], inverse]        # back in grid order
    for n in range(8):
        stitched = torch.cat([torch.cat(list(unshuffled[n, r * GRID:(r + 1) * GRID]), dim=-1) for r in range(GRID)],
                             dim=-2)
        y, x = puzzles.origin[n].tolist()
        assert torch.equal(stitched, rgb[n, :, y:y + GRID * cell, x:x + GRID * cell]), n
    assert len(set(puzzles.labels.tolist())) > 1


def test_tiles_with_gaps_and_channel_jitter_stay_in_their_cells(images) -> None:
    """With the paper's gaps and per-channel jitter, every channel of every tile is found, by brute-force search,
    inside its own cell of the crop; with gray_prob=1 the three channels of an unjittered tile are equal."""
    rgb = _rgb(images, 4)
    perms = torch.from_numpy(permutation_set(100, 0))
    torch.manual_seed(1)
    puzzles = sample_puzzles(rgb, perms, JigsawConfig(colour_jitter=0.0, gray_prob=0.0, channel_jitter=1))
    cell, tile = puzzles.cell, puzzles.tile
    assert (cell, tile) == (10, 9)
    channel_offsets = set()
    for n in range(4):
        y0, x0 = puzzles.origin[n].tolist()
        for position in range(GRID * GRID):
            k = int(puzzles.order[n, position])
            top, left = y0 + (k // GRID) * cell, x0 + (k % GRID) * cell
            found = []
            for c in range(3):
                hits = [(dy, dx) for dy in range(cell - tile + 1) for dx in range(cell - tile + 1)
                        if torch.equal(puzzles.tiles[n, position, c],
                                       rgb[n, c, top + dy:top + dy + tile, left + dx:left + dx + tile])]
                assert hits, (n, position, c)
                found.append(hits[0])
            channel_offsets.add(len(set(found)))
    assert max(channel_offsets) > 1  # the channels were shifted independently somewhere

    gray = sample_puzzles(rgb, perms, JigsawConfig(**{**PLAIN, "gray_prob": 1.0})).tiles
    assert torch.allclose(gray[:, :, 0], gray[:, :, 1]) and torch.allclose(gray[:, :, 1], gray[:, :, 2])


def test_normalisation_and_representation(images) -> None:
    """Tiles and whole images are standardised the same way, so the representation ignores brightness and contrast;
    the encoder sees RGB (three input channels) and the representation's taps are the encoder's own, matching the
    layers the colour pretexts are probed on."""
    rgb = _rgb(images, 4)
    normalised = standardize(rgb)
    flat = normalised.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.equal(standardize(torch.full((1, 3, 5, 5), 0.3)), torch.zeros(1, 3, 5, 5))

    torch.manual_seed(0)
    pretext = Jigsaw(JigsawConfig(**SMALL), SPEC, INFO).eval()
    rep = pretext.representation()
    assert pretext.encoder.in_chans == 3
    assert [(t.name, t.channels, t.stride) for t in rep.taps] == \
        [(t.name, t.channels, t.stride) for t in SPEC.build(in_chans=1).taps]
    with torch.no_grad():
        maps = rep(rgb)
        dimmer = rep(rgb * 0.5 + 0.1)
        swapped = rep(rgb[:, [2, 1, 0]])
    for tap, a, b, c in zip(rep.taps, maps, dimmer, swapped):
        assert a.shape[1] == tap.channels and a.shape[-1] == 32 // tap.stride
        assert torch.allclose(a, b, atol=1e-4)
        assert (a - c).abs().max() > 1e-3  # colour reaches the features


def test_learns_puzzles_and_reloads_the_stored_set(images, tmp_path: Path) -> None:
    """60 steps on 16 fixed real images, with new crops, tiles, jitters, gains and permutations drawn every step,
    bring the 10-way loss from chance (ln 10) to under half of it (measured: about 0.4 over the last 5 steps). A
    reloaded pretext uses the permutation set stored in the checkpoint even when its own was built differently."""
    head = {"tile_features": 128, "hidden": 512}
    fixed = torch.utils.data.Subset(images, range(16))
    pretext, store, summary = _train(fixed, tmp_path, seed=0, steps=60, batch_size=16, **head)
    losses = [h["loss"] for h in summary.history]
    assert abs(losses[0] - math.log(10)) < 0.3, losses[0]
    assert sum(losses[-5:]) / 5 < 0.5 * math.log(10), losses

    fresh = Jigsaw(JigsawConfig(**{**SMALL, **head, "permutation_seed": 7}), SPEC, INFO)
    assert not torch.equal(fresh.permutations, pretext.permutations)
    load_trained(fresh, store, Runtime("cpu"))
    assert torch.equal(fresh.permutations, pretext.permutations)
    pretext.eval()
    fresh.eval()
    rgb = _rgb(images, 4)
    with torch.no_grad():
        for a, b in zip(pretext.representation()(rgb), fresh.representation()(rgb)):
            assert torch.equal(a, b)


def test_same_seed_same_weights(images, tmp_path: Path) -> None:
    small = torch.utils.data.Subset(images, range(16))
    states = [_train(small, tmp_path / str(i), seed=s, steps=2, batch_size=8)[0].state_dict()
              for i, s in enumerate((1, 1, 2))]
    keys = [k for k in states[0] if states[0][k].is_floating_point()]
    assert all(torch.equal(states[0][k], states[1][k]) for k in keys)
    assert any(not torch.equal(states[0][k], states[2][k]) for k in keys)


def test_tiles_smaller_than_the_encoders_stride_are_refused() -> None:
    # unet at 32 px has stride 32 at its deepest tap; 9 px tiles would give empty maps.
    with pytest.raises(UsageError, match="--image-size") as caught:
        Jigsaw(JigsawConfig(**SMALL), EncoderSpec("unet", {}, 32), INFO)
    assert "9 px" in str(caught.value) and "stride 32" in str(caught.value)
    # vgg_small with its stride-2 stem (deepest stride 16) needs tiles of 16 px: 57 px images give 19 px cells.
    with pytest.raises(UsageError, match="--image-size 57 or larger"):
        Jigsaw(JigsawConfig(**SMALL), EncoderSpec("vgg_small", {"small_input": False}, 32), INFO)
    Jigsaw(JigsawConfig(**SMALL), EncoderSpec("vgg_small", {"small_input": False}, 57), DataInfo("cifar10", 57, 10))
    with pytest.raises(UsageError, match="jigsaw.tile_fraction"):
        Jigsaw(JigsawConfig(**{**SMALL, "tile_fraction": 0.0}), SPEC, INFO)
