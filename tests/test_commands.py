"""One command: every subcommand of ``gpu-lessons`` ends an error the same way (one ``error:`` line, the exit codes
of :mod:`gpu_lessons.errors`, nothing written), never writes over a file, and ``gpu-lessons --help`` lists them."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

from gpu_lessons.cli import main

from .conftest import REPO

OLD_RUN = REPO / "tests/fixtures/regression_98c0fa1.ckpt"  # a regression run's last.ckpt, learning curves included
MINE = b"my own file\n"


def gpu_lessons(*args: str) -> int:
    """What ``gpu-lessons ARGS`` exits with, run in this process."""
    try:
        return main(list(args))
    except SystemExit as stop:  # fit/validate/test/predict end an error as argparse does: SystemExit(code)
        return stop.code


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gpu-lessons"])  # else LightningCLI warns that args and sys.argv were both given
    shutil.copy(OLD_RUN, tmp_path / "run.ckpt")
    return tmp_path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# each subcommand that writes a file the user names: the command, and the file it would write
WRITERS = {
    "export": (["export", "--ckpt_path", "run.ckpt", "--output", "taken"], "taken"),
    "pictures": (["pictures", "run.ckpt", "--output", "taken"], "taken"),
    "predict": (["predict", "--config", "regression", "--ckpt_path", "run.ckpt", "--output", "taken"], "taken"),
    "lessons --copy": (["lessons", "--copy", "regression"], "regression.yaml"),
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_no_subcommand_writes_over_a_file_and_all_say_so_alike(
    command: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    args, target = WRITERS[command]
    (workdir / target).write_bytes(MINE)
    before = _files(workdir)
    assert gpu_lessons(*args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {target} already exists and was left as it is; delete or rename it, ") and len(errors) == 1
    # the one that can replace it says how
    assert errors[0].endswith("choose another name, or pass --overwrite to replace it" if command == "export" else "or choose another name")
    assert _files(workdir) == before


def test_export_overwrites_only_when_told_to(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "taken").write_bytes(MINE)
    assert gpu_lessons(*WRITERS["export"][0], "--overwrite") == 0
    assert (workdir / "taken").read_bytes() != MINE and "wrote taken" in capsys.readouterr().out


BAD_INPUTS = {
    "export without its options": (["export"], "the following arguments are required: --ckpt_path, --output (see gpu-lessons export --help)"),
    "export of a missing checkpoint": (["export", "--ckpt_path", "gone.ckpt", "--output", "x.pth"], "gone.ckpt: no such checkpoint file"),
    "export as an unknown lesson": (["export", "--ckpt_path", "run.ckpt", "--output", "x.pth", "--lesson", "Nope"], "argument --lesson: invalid choice: 'Nope'"),
    "pictures without checkpoints": (["pictures", "--output", "x.png"], "the following arguments are required: checkpoints"),
    "pictures of a missing checkpoint": (["pictures", "gone.ckpt", "--output", "x.png"], "gone.ckpt: no such checkpoint file"),
    "lessons with an unknown option": (["lessons", "--nope"], "unrecognized arguments: --nope (see gpu-lessons lessons --help)"),
    "lessons --copy of no lesson": (["lessons", "--copy", "nope"], "no lesson 'nope'; the lessons are regression, "),
    "doctor with a size of 0": (["doctor", "--size", "0"], "argument --size: must be at least 1, got 0"),
    "test of a missing checkpoint": (["test", "--config", "regression", "--ckpt_path", "gone.ckpt"], "gone.ckpt: no such checkpoint file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_any_subcommand_is_one_error_line_exit_2_and_nothing_written(
    case: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    args, message = BAD_INPUTS[case]
    before = _files(workdir)
    assert gpu_lessons(*args) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert "Traceback" not in captured.err and "usage:" not in captured.err + captured.out
    assert _files(workdir) == before


def test_a_full_disk_is_exit_1_naming_the_file_and_leaves_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    before = _files(workdir)
    assert gpu_lessons("lessons", "--copy", "regression") == 1
    assert capsys.readouterr().err == "error: cannot write or read regression.yaml: No space left on device\n"
    assert _files(workdir) == before  # neither the file nor its temporary file


def test_the_help_lists_every_subcommand_and_each_has_its_own(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the help is wrapped to the terminal's width
    assert "{fit,validate,test,predict}" in out
    for tool in ("lessons", "export", "pictures", "doctor"):
        assert f"`{tool}`: " in out, tool
        with pytest.raises(SystemExit) as stop:
            main([tool, "--help"])
        assert stop.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: gpu-lessons {tool} ")
    assert "Exit codes: 0 done, 1 failed" in out
