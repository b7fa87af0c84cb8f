"""Step 14: learning-rate schedulers (StepLR, ReduceLROnPlateau, cosine, one-cycle) on a small classifier."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gpu_lessons.models.tasks import BinaryTask


class SchedulerNet(nn.Module):
    """The course's 4 → 16 → 1 network with ReLU (97 parameters); returns a logit."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class SchedulerLesson(BinaryTask):
    """Binary classification whose interest is the learning rate: pick the scheduler in the config.

    Args:
        monitor: Metric ReduceLROnPlateau watches; the course steps it on the training loss.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "train/loss",
    ) -> None:
        super().__init__(SchedulerNet(), optimizer=optimizer, scheduler=scheduler, monitor=monitor)

    def on_train_epoch_start(self) -> None:
        """Note the learning rate this epoch trains with (Lightning steps an epoch's scheduler after its end)."""
        super().on_train_epoch_start()
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self) -> None:
        """Log that learning rate, as the course prints it every epoch."""
        super().on_train_epoch_end()
        self.log("train/lr", self._epoch_lr, prog_bar=True)
