"""Epochs that carry real work (``steps_per_epoch``) and a quiet log where output is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from gpu_lessons import progress
from gpu_lessons.data import EpochPermutation, LineDataModule, RandomFeaturesDataModule, ResumableDataLoader
from gpu_lessons.errors import UserError

from .conftest import REPO
from .helpers import run

NO_EXTRAS = ["--pictures.enabled", "false", "--trainer.logger", "false"]


@pytest.mark.parametrize(
    "lesson, total_steps, steps_per_epoch",
    [("dropout", 60, 10), ("regression", 60, 20)],  # dropout: the masks come from the same RNG stream
)
def test_steps_per_epoch_trains_bit_identical_weights(lesson: str, total_steps: int, steps_per_epoch: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    one_step_epochs = run("fit", lesson, *NO_EXTRAS, "--data.init_args.steps_per_epoch", "1",
                          "--trainer.max_epochs", str(total_steps), "--run_name", "one")
    long_epochs = run("fit", lesson, *NO_EXTRAS, "--data.init_args.steps_per_epoch", str(steps_per_epoch),
                      "--trainer.max_epochs", str(total_steps // steps_per_epoch), "--run_name", "many")
    assert one_step_epochs.trainer.global_step == long_epochs.trainer.global_step == total_steps
    assert long_epochs.trainer.current_epoch == total_steps // steps_per_epoch
    first, second = one_step_epochs.model.state_dict(), long_epochs.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def _passes(passes: int) -> ResumableDataLoader:
    """Full-batch training on 6 samples, ``passes`` steps per epoch, as TensorDataModule serves it."""
    dataset = TensorDataset(torch.arange(6))
    sampler = EpochPermutation(dataset, shuffle=True, seed=3, passes=passes)
    return ResumableDataLoader(dataset, batch_size=None, sampler=sampler)


def test_an_epoch_of_passes_draws_the_orders_one_pass_epochs_would() -> None:
    long = _passes(4)
    long.sampler.set_epoch(1)
    short = _passes(1)
    expected = []
    for epoch in range(4, 8):  # epoch 1 of 4 passes = one-pass epochs 4..7
        short.sampler.set_epoch(epoch)
        expected += [batch[0].tolist() for batch in short]
    assert len(long) == 4 and [batch[0].tolist() for batch in long] == expected


def test_a_mid_epoch_resume_keeps_its_position_and_refuses_other_steps_per_epoch() -> None:
    uninterrupted = _passes(5)
    uninterrupted.sampler.set_epoch(2)
    whole_epoch = [batch[0].tolist() for batch in uninterrupted]
    state = {"epoch": 2, "batches_trained": 3, "batch_size": 6, "passes": 5}
    resumed = _passes(5)
    resumed.load_state_dict(state)
    assert [batch[0].tolist() for batch in resumed] == whole_epoch[3:]  # the epoch's last two steps, in their orders
    other = _passes(4)
    with pytest.raises(UserError, match="resume it with steps_per_epoch 5 \\(not 4\\)"):
        other.load_state_dict(state)
    other.load_state_dict({**state, "batches_trained": 5})  # at the epoch's end any steps_per_epoch resumes
    assert len(list(other)) == 4


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_steps_per_epoch_must_be_a_positive_integer(value) -> None:
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        LineDataModule(steps_per_epoch=value)


def test_steps_per_epoch_is_for_full_batch_training() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch is for full-batch training"):
        RandomFeaturesDataModule(batch_size=32, steps_per_epoch=10)
    datamodule = RandomFeaturesDataModule(batch_size=32, steps_per_epoch=1)
    datamodule.setup("fit")
    assert len(datamodule.train_dataloader()) == 7  # one pass of 200 samples in batches of 32


def _fit_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpu_lessons", "fit", *args],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
    )


@pytest.mark.slow
def test_a_fit_whose_output_is_not_a_terminal_prints_lines_not_bar_redraws(tmp_path: Path) -> None:
    """The whole shipped regression lesson, its output piped (a CI log, ``> run.log``): under 20 kB, no redraws."""
    result = _fit_command(tmp_path, "--config", "regression")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert len(output.encode()) < 20_000
    assert "\r" not in output
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs and epochs[-1].startswith("epoch 20/20 (step 2000): ")
    assert "train/loss" in epochs[-1] and "val/loss" in epochs[-1]
    assert len(epochs) <= 20


@pytest.mark.parametrize("terminal, bar", [(True, "TQDMProgressBar"), (False, "EpochLines")])
def test_the_progress_bar_redraws_only_in_a_terminal(terminal: bool, bar: str, tmp_path, monkeypatch) -> None:
    from gpu_lessons import cli, cli_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gpu_lessons"])
    monkeypatch.setattr(cli_config, "output_is_a_terminal", lambda: terminal)
    built = cli.LessonCLI(args=["--config", "regression"], run=False)
    assert type(built.trainer.progress_bar_callback).__name__ == bar


def test_epoch_lines_print_at_most_one_line_per_interval(tmp_path, monkeypatch, capsys) -> None:
    from gpu_lessons import cli_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_config, "output_is_a_terminal", lambda: False)
    clock = iter(range(0, 1000, 1))  # each reading of the clock one second later: every other epoch is due
    monkeypatch.setattr(progress, "monotonic", lambda: next(clock))
    run("fit", "step_lr", "--pictures.enabled", "false", "--trainer.enable_progress_bar", "true")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    # a line at most every 2 seconds (epochs 1, 3, 5), and always the last
    assert [line.split(":")[0] for line in lines] == [f"epoch {e}/6 (step {e})" for e in (1, 3, 5, 6)]
