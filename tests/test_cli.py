"""The command line: fast help and listing, exit codes, and errors that say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.cli import main
from sslbench.options import KIND_OF
from sslbench.registry import REGISTRIES


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


#: Runs ``sslbench`` (its ``main``, as the console script does) on each argv in turn, with an audit hook that records
#: every file or folder opened or listed under the data root; prints, per argv, the exit code, whether torch was
#: imported by then, what under the data root was touched, and stderr's last line.
_AUDITED = """
import contextlib, io, json, os, sys
root = os.path.realpath(sys.argv[1])
touched = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.realpath(path).startswith(root):
            touched.append(path)
sys.addaudithook(hook)
from sslbench.cli import main
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print("AUDIT " + json.dumps({"code": code, "torch": "torch" in sys.modules, "touched": touched[:3],
                      "error": (err.getvalue().strip().splitlines() or [""])[-1]}))
"""


def _audits(stdout: str) -> list[dict]:
    return [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("AUDIT ")]


def test_usage_errors_come_before_any_data_is_read(tmp_path, shared_data):
    cifar = str(shared_data / "cifar10")
    common = ["run", "--dataset", "cifar10", "--data-root", cifar, "--out", str(tmp_path), "--dry-run"]
    source_checked = [  # what the plugins' source says: found before torch is imported
        (["--pretext", "quantized", "--set", "quantized.rebalnce=false"], "Did you mean 'rebalance'?"),
        (["--pretext", "quantized", "--set", "quantized.lr=abc"], "option lr='abc': expected a number"),
        (["--set", "linear.reductio=avg"], "Did you mean 'reduction'?"),
        (["--set", "cifar10.on_bad_imag=skip"], "Did you mean 'on_bad_image'?"),
        (["--set", "encoder.small_input=maybe"], "option small_input='maybe': expected true or false or none"),
        (["--protocol", "finetune_seg"], "protocol 'finetune_seg' needs mask"),
        (["--eval-split", "tset"], "has no split 'tset'"),
        (["--pretext", "quantized", "--set", "quantzed.lr=1"], "Did you mean 'quantized'?"),
    ]
    plugin_checked = [  # a Config's own checks: the plugin is imported, still no data is read
        (["--protocol", "colorization", "--set", "colorization.auc=simpson"], "choose one of mean151, trapezoid"),
        (["--set", "linear.reduction=nonsense"], "choose one of"),
    ]
    cases = source_checked + plugin_checked
    result = subprocess.run([sys.executable, "-c", _AUDITED, cifar, json.dumps([common + argv for argv, _ in cases])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcomes = _audits(result.stdout)
    assert len(outcomes) == len(cases)
    for (argv, message), outcome in zip(cases, outcomes):
        assert outcome["code"] == 2 and message in outcome["error"], (argv, outcome)
        assert outcome["touched"] == [], (argv, outcome)
    for (argv, _), outcome in zip(source_checked, outcomes):
        assert not outcome["torch"], (argv, "torch was imported before the error")
    # The hook does see a run that gets to the data (so the checks above can fail): CamVid's folder is read.
    camvid = str(shared_data / "camvid")
    reached = subprocess.run([sys.executable, "-c", _AUDITED, camvid, json.dumps([
        ["run", "--dataset", "camvid", "--data-root", camvid, "--pretext", "random", "--protocol", "finetune_seg",
         "--subset", "4", "--eval-subset", "4", "--out", str(tmp_path), "--dry-run"]])],
        capture_output=True, text=True, timeout=300)
    assert _audits(reached.stdout)[-1]["touched"], reached.stdout + reached.stderr


def test_list_options_filter_and_show(capsys):
    assert main(["list", "pretexts", "--filter", "quant", "--options"]) == 0
    out = capsys.readouterr().out
    assert "quantized" in out and "regression" not in out
    assert "rebalance: bool = True" in out and "temperature: float = 0.38" in out
    assert main(["show", "linear"]) == 0
    out = capsys.readouterr().out
    assert "options (--set linear.KEY=VALUE)" in out and "reduction: str = 'avg'" in out and "needs: label" in out
    assert main(["show", "quantizd"]) == 2
    assert "Did you mean 'quantized'?" in capsys.readouterr().err


def _examples() -> list[list[str]]:
    """Every ``sslbench ...`` command in ``run --help``'s examples and in the README's bash blocks."""
    import re
    import shlex

    from sslbench.run_cli import EXAMPLES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    lines = [line.strip() for line in EXAMPLES.splitlines()] + [line.strip() for b in blocks for line in b.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("sslbench ")]


def test_help_and_readme_examples_pass_the_parser_and_the_option_checks():
    import re

    from sslbench.cli import build_parser
    from sslbench.options import check_experiment, check_options, describe
    from sslbench.run_cli import experiment_from_args

    examples = _examples()
    assert len(examples) >= 6
    parser = build_parser()
    for argv in examples:
        args = parser.parse_args(argv)
        if args.command == "run" and args.config is None:
            check_experiment(experiment_from_args(args))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    run_help = parser._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    settings = set(re.findall(r"\b([a-z_0-9]+)\.([a-z_0-9]+)=([A-Za-z0-9_.]+)", run_help))
    command_line = readme.split("## The command line", 1)[1].split("\n## ", 1)[0]  # not the plugin-writing example
    settings |= set(re.findall(r"--set ([a-z_0-9]+)\.([a-z_0-9]+)=([A-Za-z0-9_.]+)", command_line))
    assert ("quantized", "rebalance", "false") in settings and ("linear", "reduction", "bilinear") in settings
    kinds = {"encoder": ("encoder", "vgg_small")}
    for owner, key, value in settings:
        kind, name = kinds.get(owner) or next((k, owner) for k in ("pretext", "protocol", "dataset")
                                              if owner in REGISTRIES[KIND_OF[k]])
        check_options(describe(kind, name), {key: value}, f"{kind} {name!r}")
