"""The overparam-zoo command line and running unmodified scripts with the registry loaded."""

import argparse
import contextlib
import io
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from overparam_zoo.cli import COMMANDS, build_parser, main

TRAIN_PY_LIKE = """
import argparse, importlib, sys
import timm, torch

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--device-modules", nargs="+", default=None)
args = parser.parse_args()
# as timm's train.py does with --device-modules
for module in args.device_modules or []:
    importlib.import_module(module)
model = timm.create_model(args.model, num_classes=3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print("trained", type(model.conv1).__name__, float(loss) > 0)
"""


def test_list_and_show(capsys):
    assert main(["list", "resnet18_op_d2*", "--zoo", "timm"]) == 0
    out = capsys.readouterr().out
    assert "resnet18_op_d2_bn" in out and "resnet34" not in out
    assert main(["list", "nothing*"]) == 1
    assert capsys.readouterr().out == "no variants match\n"
    assert main(["list", "--base", "efficientnet_b[23]", "--zoo", "timm"]) == 0
    out = capsys.readouterr().out
    assert out.split() and {line.split()[0] for line in out.splitlines()} == {
        "efficientnet_b2_op_d2",
        "efficientnet_b2_op_d4",
        "efficientnet_b3_op_d2",
        "efficientnet_b3_op_d4",
    }
    assert main(["show", "resnet18_op_d2"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "[3x3 1x1]" in out
    assert "parameters after collapse: 11,689,512" in out
    assert main(["show", "nope"]) == 1  # one line on stderr, like every command's errors
    err = capsys.readouterr().err
    assert err.startswith("overparam-zoo show: error: unknown op variant 'nope'") and err.count("\n") == 1


def test_device_modules_loop_with_only_timm(tmp_path):
    script = tmp_path / "train_like.py"
    script.write_text(textwrap.dedent(TRAIN_PY_LIKE))
    result = subprocess.run(
        [sys.executable, str(script), "--model", "resnet18_op_d2", "--device-modules", "overparam_zoo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "trained OverparamConv2d True" in result.stdout


def test_run_launcher_passes_argv_and_exit_code(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import sys, timm
        assert "resnet18_op_d2" in timm.list_models("*_op_*")
        print("argv", sys.argv[1:])
        sys.exit(int(sys.argv[1]))
    """)
    )
    result = subprocess.run(
        [sys.executable, "-m", "overparam_zoo.cli", "run", str(script), "3", "--flag"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert "argv ['3', '--flag']" in result.stdout


def test_console_script_help():
    """The installed console script, found beside this interpreter (not through PATH): its help
    lists every command of COMMANDS with its own help line (not just words of the description),
    and every subcommand's --help exits 0 and names its own usage."""
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    script = next((f / "overparam-zoo" for f in folders if (f / "overparam-zoo").is_file()), None)
    assert script is not None, f"no overparam-zoo script in {folders}; install the package (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)
    # command rows are indented 4 spaces ("    demo      train ..."), their help on the same line or the
    # next (a long name); wrapped help lines are indented more
    lines = result.stdout.splitlines() + [""]
    listed = {
        m.group(1): (m.group(2) or "") + " " + lines[i + 1]
        for i, m in enumerate(re.match(r"^    (\S+)(\s+\S.*)?$", line) for line in lines)
        if m
    }
    for command in COMMANDS:
        help_line = next(a.help for a in subparsers._choices_actions if a.dest == command)
        assert help_line and help_line.split()[0] in listed.get(command, ""), (command, help_line, result.stdout)
    for command in COMMANDS:  # in-process: one subprocess per command would cost ~1 s of imports each
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as out:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert out.getvalue().startswith(f"usage: overparam-zoo {command}"), (command, out.getvalue()[:200])
