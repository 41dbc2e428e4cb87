"""The command line: fast help and listing, exit codes, and errors that say what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sslbench.cli import main


def test_help_and_list_do_not_import_torch():
    code = ("import sys\nfrom sslbench.cli import main\nmain(['list'])\n"
            "assert 'torch' not in sys.modules, 'list imported torch'\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, '--help imported torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("random", "regression", "linear", "synthetic", "vgg_small", "timm/*"):
        assert name in result.stdout


def test_list_one_kind_with_filter(capsys):
    assert main(["list", "datasets", "--filter", "c*"]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "camvid" in out and "synthetic" not in out


def test_unknown_pretext_is_a_usage_error_with_suggestion(capsys, tmp_path):
    code = main(["run", "--pretext", "regresion", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown pretext 'regresion'" in err and "Did you mean 'regression'?" in err and "random" in err


def test_unknown_protocol_and_encoder(capsys, tmp_path):
    assert main(["run", "--protocol", "linearr", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'linear'?" in capsys.readouterr().err
    assert main(["run", "--encoder", "vgg_smal", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'vgg_small'?" in capsys.readouterr().err


def test_missing_data_root_names_path_and_layout(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code = main(["run", "--pretext", "random", "--dataset", "cifar10", "--data-root", str(missing),
                 "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err and "layout" in err.lower()


def test_protocol_needing_masks_on_a_dataset_without_them(capsys, tmp_path, shared_data):
    code = main(["run", "--pretext", "random", "--protocol", "linear", "--dataset", "camvid",
                 "--data-root", str(shared_data / "camvid"), "--out", str(tmp_path)])
    assert code == 2
    assert "protocol 'linear' needs label" in capsys.readouterr().err


def test_bad_plugin_option(capsys, tmp_path):
    assert main(["run", "--pretext", "regression", "--set", "regression.los=l1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no option 'los'" in err and "loss" in err
    assert main(["run", "--pretext", "regression", "--set", "quantized.rebalance=false", "--out", str(tmp_path)]) == 2
    assert "'quantized' is none of this run's variants, pretexts" in capsys.readouterr().err


def test_bad_flag_values_exit_2(tmp_path):
    for argv in (["run", "--seeds", "a,b"], ["run", "--image-size", "0"], ["run", "--set", "novalue"],
                 ["table", "--format", "html"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_table_without_records(capsys, tmp_path):
    assert main(["table", "--runs", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
