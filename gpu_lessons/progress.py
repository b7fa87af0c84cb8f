"""Progress for a run whose output is not a terminal: a line per epoch instead of progress-bar redraws.

A tqdm bar redraws itself with carriage returns; in a terminal that is one moving line, but in a CI log, a SLURM
job's output file or ``> run.log`` every redraw stays, and a 2000-epoch lesson wrote 1.7 MB of them.
"""

from __future__ import annotations

import sys
from time import monotonic
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar


class EpochLines(ProgressBar):
    """Prints one line per training epoch (at most one every ``interval`` seconds, and always the last):
    ``epoch 3/20: train/loss 0.0123, val/loss 0.0456``. Validation, test and predict print nothing of their own.

    Args:
        interval: Seconds between lines at the least; the epochs in between print nothing (the next line shows
            the latest epoch's metrics).
    """

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__()
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval = interval
        self._enabled = True
        self._last_print = float("-inf")
        self._pending_epoch: int | None = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_print = float("-inf")
        self._pending_epoch = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The lesson logs its epoch's metrics after the callbacks' on_train_epoch_end: the line for an epoch is
        # written once they are all in, as the next one starts (or as training ends).
        self._print_pending(trainer, pl_module, last=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print_pending(trainer, pl_module, last=True)

    def _print_pending(self, trainer: Trainer, pl_module: LightningModule, *, last: bool) -> None:
        epoch, self._pending_epoch = self._pending_epoch, None
        if epoch is None or not self._enabled or not trainer.is_global_zero:
            return
        now = monotonic()
        if not last and now - self._last_print < self.interval:
            return
        self._last_print = now
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{name} {_number(value)}" for name, value in metrics.items())
        total = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        print(f"epoch {epoch + 1}{total} (step {trainer.global_step}){': ' + shown if shown else ''}", flush=True)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def output_is_a_terminal() -> bool:
    """Whether progress bars can redraw in place (where Lightning's tqdm bars write: standard output)."""
    return sys.stdout.isatty()
