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
