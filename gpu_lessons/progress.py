"""Progress for a run whose output is not a terminal: a line per epoch instead of progress-bar redraws.

A tqdm bar redraws itself with carriage returns; in a terminal that is one moving line, but in a CI log, a SLURM
job's output file or ``> run.log`` every redraw stays, and a 2000-epoch lesson wrote 1.7 MB of them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from time import monotonic
from pathlib import Path
from typing import Any, Optional

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


class _LightningAdvertising(logging.Filter):
    """Drops Lightning's tips about its cloud products (litlogger, litmodels) and the model summary's "0 Total
    Flops" line (FLOPs are only counted with a meta-device trace, which these runs never do); real messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip"):
            return False
        if "Total Flops" in message:
            record.msg, record.args = re.sub(r"\n\s*0\s+Total Flops", "", message), ()
        return True


def quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningAdvertising) for f in logger.filters):
            logger.addFilter(_LightningAdvertising())
    # Lightning 2.6's own call into torch's pytree API; nothing a user of these lessons can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # The lessons log once per epoch, so an epoch of fewer batches than log_every_n_steps (a small folder of your own
    # pictures) loses nothing.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")
    # The lessons' data sits on the device already: worker processes would only copy it back and forth.
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers")


def print_fit_summary(trainer: Trainer, best: Any, latest: Any, pictures: Optional[Path]) -> None:
    """After a fit, on rank zero: the last epoch's metrics, the best validation metric, and where the run's
    checkpoints (``best`` and ``latest``, its two ``ModelCheckpoint``s) and pictures are."""
    if not trainer.is_global_zero:
        return
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    best_so_far = {k: v for k, v in metrics.items() if k.endswith("_best")}
    last_epoch = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k not in best_so_far)
    if last_epoch:
        print(f"after {trainer.current_epoch} epochs: {last_epoch}")
    for key, value in best_so_far.items():
        print(f"best {key.removesuffix('_best')} of the run: {value:.4g}")
    if pictures is not None and pictures.is_dir():
        print(f"pictures: {shown(str(pictures))}/")
    if latest.best_model_path:  # with no monitor, its "best" is the latest save
        print(f"last checkpoint (the latest epoch): {shown(latest.best_model_path)}")
    if best.best_model_path and best.best_model_score is not None:
        score = f"{best.monitor} {float(best.best_model_score):.4g}"
        print(f"best checkpoint ({score}): {shown(best.best_model_path)}")


def shown(path: str) -> str:
    """``path`` relative to the current folder when it is inside it: what to type in the next command."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
