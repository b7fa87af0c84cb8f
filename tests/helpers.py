"""Running the CLI in-process, the way the tests drive it."""

from __future__ import annotations

import sys
from unittest import mock

import torch

from gpu_lessons.cli import LessonCLI, cli_main

from .conftest import CONFIGS

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def run(subcommand: str, config: str, *extra: str) -> LessonCLI:
    """``python -m gpu_lessons <subcommand> --config configs/<config>.yaml <extra>``, in the current directory."""
    # pytest's own argv would make LightningCLI warn that both args and sys.argv were given
    with mock.patch.object(sys, "argv", ["gpu_lessons"]):
        cli = cli_main([subcommand, "--config", str(CONFIGS / f"{config}.yaml"), *QUIET, *extra])
    assert cli is not None
    return cli


def predict(cli: LessonCLI, inputs: list) -> torch.Tensor:
    """The trained lesson's predictions for ``inputs``."""
    model = cli.model.eval()
    with torch.no_grad():
        return model.predict_step(torch.tensor(inputs, dtype=torch.float32), 0)


def metric(cli: LessonCLI, name: str) -> float:
    return float(cli.trainer.callback_metrics[name])


def logged(cli: LessonCLI, tag: str) -> list[float]:
    """The values the run wrote to TensorBoard under ``tag``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(cli.trainer.logger.log_dir)
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


# --- callbacks that break a run on purpose (used as ``--trainer.callbacks+=tests.helpers.<Name>``) ---------------

import os  # noqa: E402
import signal  # noqa: E402

from lightning.pytorch import Callback  # noqa: E402


class KillAtEpochStart(Callback):
    """SIGKILL this process when ``epoch`` starts: the previous epoch's checkpoint is on disk, nothing else is."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class SigtermAtStep(Callback):
    """Send this process SIGTERM after optimizer step ``step`` (mid-epoch when steps per epoch > 1)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class PoisonWeightsAtStep(Callback):
    """Set a weight to NaN just before optimizer step ``step`` (0-based), so that step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.net.parameters()).view(-1)[0] = float("nan")


class SlowToBuild(Callback):
    """Takes ``seconds`` to build, after saying so on stderr: a window in the command's start-up, before any stage."""

    def __init__(self, seconds: float) -> None:
        import sys
        import time

        sys.stderr.write("building slowly\n")
        sys.stderr.flush()
        time.sleep(seconds)


class PauseAtEpochStart(Callback):
    """Say ``epoch N started`` on stderr when ``epoch`` starts, then wait ``seconds``: a moment to press Ctrl-C in."""

    def __init__(self, epoch: int, seconds: float) -> None:
        self.epoch, self.seconds = epoch, seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import sys
        import time

        if trainer.current_epoch == self.epoch:
            sys.stderr.write(f"epoch {self.epoch} started\n")
            sys.stderr.flush()
            time.sleep(self.seconds)
