"""Progress: a bar on a terminal, one plain line per event in a log, nothing when turned off;
and what a long command (export) really writes to a log file."""

import io
import subprocess
import sys

import pytest
import torch

from overparam_zoo.progress import PROGRESS_ENV, Progress
from overparam_zoo.sharing.export import PROGRESS_STEPS, export_collapsed


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)


def run_steps(stream):
    with Progress("export", 3, stream=stream) as progress:
        progress.update(1, note="reading checkpoint")
        progress.note("still reading")
        progress.update(1, note="collapsing")
        progress.update(1)
    return stream.getvalue()


def test_a_log_gets_one_line_per_event_and_no_carriage_return():
    text = run_steps(io.StringIO())
    assert "\r" not in text
    assert text.splitlines() == [
        "export: 1/3 reading checkpoint",
        "export: 1/3 still reading",
        "export: 2/3 collapsing",
        "export: 3/3",
    ]


def test_lines_mode_throttles_plain_updates_but_never_notes_or_the_last_step():
    stream = io.StringIO()
    with Progress("train", 100, stream=stream, min_interval=3600) as progress:
        for step in range(100):
            progress.update(1, note="evaluating" if step == 49 else "")
    assert stream.getvalue().splitlines() == ["train: 1/100", "train: 50/100 evaluating", "train: 100/100"]


def test_off_writes_nothing_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "off")
    assert run_steps(Terminal()) == ""
    assert run_steps(io.StringIO()) == ""


def test_a_terminal_gets_a_bar_unless_lines_are_asked_for(monkeypatch):
    bar = run_steps(Terminal())
    assert "\r" in bar and "export:" in bar and "1/3" in bar  # tqdm redraws at most every 0.1 s
    monkeypatch.setenv(PROGRESS_ENV, "lines")
    assert run_steps(Terminal()).splitlines()[0] == "export: 1/3 reading checkpoint"
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    assert "\r" in run_steps(io.StringIO())  # asked for, even in a log


def test_export_calls_progress_as_often_as_it_says(tmp_path):
    import timm

    notes = []
    export_collapsed(timm.create_model("resnet18_op_d2", num_classes=3), tmp_path / "out", progress=notes.append)
    assert len(notes) == PROGRESS_STEPS


@pytest.mark.slow
def test_cli_export_progress_in_a_log_file_is_plain_lines(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18_op_d2", num_classes=3).state_dict(), tmp_path / "w.pth")
    log = tmp_path / "export.log"
    argv = ["-m", "overparam_zoo.cli", "export", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2"]
    with log.open("w") as stderr:  # stderr a real file, as in `overparam-zoo export ... 2> export.log`
        done = subprocess.run([sys.executable, *argv, "--out", str(tmp_path / "out")], stderr=stderr, timeout=300)
    assert done.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("export: ")]
    total = 1 + PROGRESS_STEPS
    assert lines[0] == f"export: 1/{total} reading checkpoint"
    assert lines[1] == f"export: 2/{total} collapsing"
    assert lines[-1] == f"export: {total}/{total} writing {tmp_path / 'out'}"
    assert len(lines) == total
