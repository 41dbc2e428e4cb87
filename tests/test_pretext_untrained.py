"""``untrained``: another pretext's network at its initialisation, the scratch baseline of whole-network transfer."""

from __future__ import annotations

import json

import pytest
import torch

from sslbench.cli import main
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.pretexts.cgan import CGAN, CGANConfig
from sslbench.pretexts.untrained import Untrained, UntrainedConfig
from sslbench.runtime import seed_everything

SPEC, DATA = EncoderSpec("vgg_small", {"width_mult": 0.25}, 32), DataInfo("camvid", 32, 11)


def test_it_is_the_cgan_at_the_same_seed_before_any_training() -> None:
    seed_everything(3)
    cgan = CGAN(CGANConfig(), SPEC, DATA)
    seed_everything(3)
    untrained = Untrained(UntrainedConfig(like="cgan"), SPEC, DATA)
    expected, got = cgan.state_dict(), untrained.network.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not Untrained.trainable and not untrained.can_colorize
    # Protocols get the generator: the same segmentation network (with a fresh head, drawn from the seed) and taps.
    torch.manual_seed(5)
    segmenter = untrained.segmentation_model(11)
    torch.manual_seed(5)
    reference = cgan.segmentation_model(11)
    assert type(segmenter) is type(reference) and hasattr(segmenter, "head")
    rgb = torch.rand(2, 3, 32, 32)
    out = segmenter.eval()(rgb)
    assert out.shape == (2, 11, 32, 32) and torch.equal(out, reference.eval()(rgb))
    assert [t.name for t in untrained.representation().taps] == [t.name for t in cgan.representation().taps]


@pytest.mark.parametrize("like, message", [("random", "untrained already"), ("untrained", "name the pretext")])
def test_a_network_that_is_not_trained_anyway_is_refused(like: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Untrained(UntrainedConfig(like=like), SPEC, DATA)


def test_scratch_unet_row_runs_finetune_seg_end_to_end(shared_data, tmp_path, one_thread, capsys) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(f'seeds = [0]\ndevice = "cpu"\n[budget]\nsteps = 1\nbatch_size = 4\n'
                   f'[datasets.camvid]\ndata_root = "{shared_data / "camvid"}"\nimage_size = [32, 64]\nsubset = 8\n'
                   f'eval_subset = 4\n[encoders.vgg_small]\nwidth_mult = 0.25\n[protocols.finetune_seg]\nepochs = 1.0\n'
                   '[protocols.colorization]\n[variants.scratch-unet]\npretext = "untrained"\nlike = "cgan"\n')
    assert main(["run", "--config", str(exp), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    records = sorted((tmp_path / "runs").rglob("scratch-unet__*.json"))
    by_protocol = {json.loads(p.read_text())["protocol"]: json.loads(p.read_text()) for p in records}
    assert by_protocol["finetune_seg"]["status"] == "ok" and by_protocol["colorization"]["status"] == "skipped"
    assert by_protocol["finetune_seg"]["pretext"] == "untrained"
    assert by_protocol["finetune_seg"]["config"]["pretext_run"]["pretext_options"]["like"] == "cgan"
    assert not (tmp_path / "cache" / "checkpoints").exists()  # nothing trained
    assert main(["run", "--pretext", "untrained", "--set", "untrained.like=nope", "--dry-run"]) == 2


def test_a_new_version_of_the_copied_pretext_makes_its_rows_stale(tmp_path, monkeypatch) -> None:
    """``untrained`` runs ``cgan``'s code: cgan's identity is part of its hashes, so a new ``version`` of the cGAN
    plugin (how a plugin says its network changed) names new records for the scratch row too, and for no one else."""
    from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
    from sslbench.plan import resolve_plan

    def hashes() -> dict[str, tuple[str, str]]:
        exp = Experiment(variants=[VariantSpec("scratch-unet", "untrained"), VariantSpec("regression", "regression")],
                         datasets=[DatasetSpec("synthetic", subset=32, eval_subset=16)], out=tmp_path / "runs")
        plan = resolve_plan(exp, tmp_path / "cache")
        return {u.variant.name: (u.checkpoint_hash, u.evaluations[0].hash) for u in plan.units}

    before = hashes()
    monkeypatch.setattr(CGAN, "version", "2", raising=False)
    after = hashes()
    assert after["scratch-unet"][0] != before["scratch-unet"][0] and after["scratch-unet"][1] != before["scratch-unet"][1]
    assert after["regression"] == before["regression"]
