"""What a run prints beside Lightning's own: a line per epoch where output is not a terminal (a tqdm bar's every
redraw would stay in a log file), the summary after a fit, and fewer of Lightning's notices."""

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
    """One line per training epoch, at most one every ``interval`` seconds (and always the last):
    ``epoch 3/20 (step 60): train/loss 0.0123, val/loss 0.0456``. Other stages print nothing of their own."""

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
        """Whether lines are printed."""
        return self._enabled

    def disable(self) -> None:
        """Print nothing (Lightning's tuners and other ranks)."""
        self._enabled = False

    def enable(self) -> None:
        """Print lines again."""
        self._enabled = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fit with no line pending."""
        self._last_print = float("-inf")
        self._pending_epoch = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the last epoch's line: the lesson logs its metrics after the callbacks' ``on_train_epoch_end``."""
        self._print_pending(trainer, pl_module, last=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Hold this epoch's line until its metrics are all in."""
        self._pending_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the last epoch's line, however soon after the one before."""
        self._print_pending(trainer, pl_module, last=True)

    def _print_pending(self, trainer: Trainer, pl_module: LightningModule, *, last: bool) -> None:
        epoch, self._pending_epoch = self._pending_epoch, None
        if epoch is None or not self._enabled or not trainer.is_global_zero:
            return
        now = monotonic()
        if not last and now - self._last_print < self.interval:
            return
        self._last_print = now
        metrics = self.get_metrics(trainer, pl_module)
        shown = ", ".join(
            f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
            for name, value in metrics.items()
            if name != "v_num"
        )
        total = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        print(f"epoch {epoch + 1}{total} (step {trainer.global_step}){': ' + shown if shown else ''}", flush=True)


def output_is_a_terminal() -> bool:
    """Whether progress bars can redraw in place (where Lightning's tqdm bars write: standard output)."""
    return sys.stdout.isatty()


class _LightningAdvertising(logging.Filter):
    """Drops Lightning's tips about its cloud products and the model summary's "0 Total Flops" line (these runs
    never count FLOPs); real messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip"):
            return False
        if "Total Flops" in message:
            record.msg, record.args = re.sub(r"\n\s*0\s+Total Flops", "", message), ()
        return True


def quiet_lightning() -> None:
    """Silence Lightning's notices that a learner cannot act on (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningAdvertising) for f in logger.filters):
            logger.addFilter(_LightningAdvertising())
    # Lightning 2.6's own call into torch's pytree API
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # the lessons log once per epoch, so a short epoch loses nothing
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")
    # the lessons' data sits on the device already: workers would only copy it back and forth
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers")


def print_fit_summary(trainer: Trainer, best: Any, latest: Any, pictures: Optional[Path]) -> None:
    """After a fit, on rank zero: the last epoch's metrics, the best validation metric, and where the run's
    checkpoints (``best`` and ``latest``, its two ``ModelCheckpoint``s) and pictures are."""
    if not trainer.is_global_zero:
        return
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    last_epoch = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_best"))
    if last_epoch:
        print(f"after {trainer.current_epoch} epochs: {last_epoch}")
    for key, value in metrics.items():
        if key.endswith("_best"):
            print(f"best {key.removesuffix('_best')} of the run: {value:.4g}")
    if pictures is not None and pictures.is_dir():
        print(f"pictures: {shown(str(pictures))}/")
    if latest.best_model_path:  # with no monitor, its "best" is the latest save
        print(f"last checkpoint (the latest epoch): {shown(latest.best_model_path)}")
    if best.best_model_path and best.best_model_score is not None:
        print(f"best checkpoint ({best.monitor} {float(best.best_model_score):.4g}): {shown(best.best_model_path)}")


def shown(path: str) -> str:
    """``path`` relative to the current folder when it is inside it: what to type in the next command."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
