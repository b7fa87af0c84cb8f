"""The training step reads nothing back from the device: on a GPU every such read stalls the pipeline once per step.

Recorded with a ``TorchFunctionMode``, which sees every tensor operation, including ``bool(tensor)`` and ``.item()``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

from gpu_lessons.cli import cli_main
from gpu_lessons.models import BlobClassifierLesson, CNNLesson, MLPLesson, RegressionLesson

from .conftest import CONFIGS

# Operations that copy a value to the host (and so wait for the device) or size their output by the values.
HOST_READS = {
    "__bool__", "item", "tolist", "__int__", "__float__", "__index__", "cpu", "numpy", "equal", "allclose",
    "unique", "nonzero", "masked_select", "bincount",
}


class HostReads(TorchFunctionMode):
    """Records the host-reading operations run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.recording = True

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if self.recording and name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


BATCHES = {
    MLPLesson: lambda: (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))),
    CNNLesson: lambda: (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))),
    BlobClassifierLesson: lambda: (torch.randn(8, 2), torch.randint(0, 2, (8,)).float()),
    RegressionLesson: lambda: (torch.randn(8, 1), torch.randn(8, 1)),
}


@pytest.mark.parametrize("lesson_class", list(BATCHES), ids=lambda c: c.__name__)
def test_training_metrics_accumulate_without_reading_the_device(lesson_class: type) -> None:
    lesson = lesson_class()
    inputs, targets = BATCHES[lesson_class]()
    loss, preds, targets = lesson.model_step((inputs, targets))
    with HostReads() as recorder:
        for _ in range(3):
            lesson.train_loss.update(loss.detach())
            lesson.train_metric.update(preds, targets)
    assert recorder.reads == []
    assert torch.isfinite(lesson.train_metric.compute())
    torch.testing.assert_close(lesson.train_loss.compute(), loss.detach())


@pytest.mark.parametrize("lesson_class", list(BATCHES), ids=lambda c: c.__name__)
def test_training_step_on_cpu_reads_only_the_nan_guards_flag(lesson_class: type) -> None:
    """On the CPU the NaN guard reads one flag per step (free there); on a GPU it reads it every 32 steps."""
    lesson = lesson_class()
    with HostReads() as recorder:
        lesson.training_step(BATCHES[lesson_class](), 0)
    assert recorder.reads == ["__bool__"]


def test_a_nan_loss_shows_in_the_epoch_mean_instead_of_being_dropped() -> None:
    lesson = MLPLesson()
    lesson.train_loss.update(torch.tensor(0.5))
    lesson.train_loss.update(torch.tensor(float("nan")))
    assert torch.isnan(lesson.train_loss.compute())


class RecordSecondEpochSteps(Callback):
    """Records host reads from the second epoch's first training step to its validation: every step's hooks,
    optimizer and scheduler steps, logging, progress bar, checkpoint bookkeeping and the next batch's fetch."""

    recorder: HostReads

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0:
            self.recorder.recording = True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.recording = False


def test_lightnings_whole_training_loop_reads_only_the_nan_guards_flag(
    tmp_path: Path, tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped MLP config through the CLI (progress bar, LR monitor, checkpoints, logging every step) on CPU."""
    monkeypatch.chdir(tmp_path)
    recorder = HostReads()
    recorder.recording = False
    monkeypatch.setattr(RecordSecondEpochSteps, "recorder", recorder, raising=False)
    args = [
        "fit", "--config", str(CONFIGS / "mlp.yaml"),
        "--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.download", "false",
        "--data.init_args.val_size", "100", "--data.init_args.batch_size", "50",  # 10 steps per epoch
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--pictures.enabled", "false",
        "--trainer.callbacks+=tests.test_hot_path.RecordSecondEpochSteps",
    ]  # fmt: skip
    with mock.patch.object(sys, "argv", ["gpu_lessons"]), recorder:
        cli = cli_main(args)
    assert cli is not None and cli.trainer.global_step == 20
    assert Counter(recorder.reads) == {"__bool__": 10}  # the CPU NaN guard's one flag per step, nothing else
