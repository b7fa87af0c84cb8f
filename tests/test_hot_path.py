"""The training step reads nothing back from the device: on a GPU every such read stalls the pipeline once per step.

Recorded with a ``TorchFunctionMode``, which sees every tensor operation, including ``bool(tensor)`` and ``.item()``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

from gpu_lessons.callbacks import FiniteLossGuard
from gpu_lessons.cli import cli_main
from gpu_lessons.data import LineDataModule
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
def test_the_epochs_training_metrics_are_those_of_its_steps(lesson_class: type) -> None:
    """Steps only keep their outputs; the epoch's end gives the metrics what one update per step would have."""
    lesson = lesson_class()
    batches = [BATCHES[lesson_class]() for _ in range(3)]
    with HostReads() as recorder:
        losses = [lesson.training_step(batch, i).detach() for i, batch in enumerate(batches)]
    assert recorder.reads == []
    per_step = lesson_class().train_metric
    for batch in batches:
        per_step.update(*lesson.model_step(batch)[1:])
    with pytest.warns(UserWarning, match="self.log"):  # no trainer here to log to
        lesson.on_train_epoch_end()
    assert lesson.train_step_outputs == []
    torch.testing.assert_close(lesson.train_loss.compute(), torch.stack(losses).mean())
    torch.testing.assert_close(lesson.train_metric.compute(), per_step.compute())


@pytest.mark.parametrize("lesson_class", list(BATCHES), ids=lambda c: c.__name__)
def test_the_training_step_reads_nothing_back(lesson_class: type) -> None:
    lesson = lesson_class()
    with HostReads() as recorder:
        lesson.training_step(BATCHES[lesson_class](), 0)
    assert recorder.reads == []


def test_a_nan_loss_shows_in_the_epoch_mean_instead_of_being_dropped() -> None:
    lesson = MLPLesson()
    lesson.train_loss.update(torch.tensor(0.5))
    lesson.train_loss.update(torch.tensor(float("nan")))
    assert torch.isnan(lesson.train_loss.compute())


class RecordTrainingSteps(Callback):
    """Records host reads inside every training step: from Lightning handing over the batch (after the DataModule's
    ``on_after_batch_transfer``) to the loss's backward pass, i.e. the lesson's ``training_step`` and ``forward``."""

    recorder: HostReads
    steps = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.recording = True

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self.recorder.recording = False
        type(self).steps += 1


def test_no_training_step_of_a_whole_cli_run_reads_the_device(
    tmp_path: Path, tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped MLP config through the CLI, every callback on: what our step does never waits for the device.
    (Lightning's own loop around it is Lightning's business: it is not counted.)"""
    monkeypatch.chdir(tmp_path)
    recorder = HostReads()
    recorder.recording = False
    monkeypatch.setattr(RecordTrainingSteps, "recorder", recorder, raising=False)
    monkeypatch.setattr(RecordTrainingSteps, "steps", 0)
    args = [
        "fit", "--config", str(CONFIGS / "mlp.yaml"),
        "--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.download", "false",
        "--data.init_args.val_size", "100", "--data.init_args.batch_size", "50",  # 10 steps per epoch
        "--trainer.max_epochs", "2", "--pictures.enabled", "false",
        "--trainer.callbacks+=tests.test_hot_path.RecordTrainingSteps",
    ]  # fmt: skip
    with mock.patch.object(sys, "argv", ["gpu_lessons"]), recorder:
        cli = cli_main(args)
    assert cli is not None and cli.trainer.global_step == 20
    assert RecordTrainingSteps.steps == 20
    assert recorder.reads == []


def test_the_finite_loss_guard_reads_the_device_once_per_interval() -> None:
    """The accelerator path of the guard, run on the CPU: the kept losses are read together every ``check_every_n_steps``."""
    guard = FiniteLossGuard(check_every_n_steps=4)
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[guard], num_sanity_val_steps=0, limit_val_batches=0)
    recorder = HostReads()
    recorder.recording = False
    with mock.patch.object(guard, "on_before_backward", side_effect=_recording(guard.on_before_backward, recorder)):
        with recorder:
            trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=12))
    assert trainer.global_step == 12
    assert recorder.reads == ["tolist"] * 3  # steps 4, 8 and 12 (four losses each), nothing in the 9 steps between


def _recording(hook: Any, recorder: HostReads) -> Any:
    def recorded(*args: Any) -> Any:
        recorder.recording = True
        try:
            return hook(*args)
        finally:
            recorder.recording = False

    return recorded
