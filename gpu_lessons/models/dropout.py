"""Step 13: a big network memorises noise; dropout and more data are the cures."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gpu_lessons.models.tasks import BinaryTask


class OverfitNet(nn.Module):
    """The course's 10 → 128 → 128 → 1 network (18,049 parameters, dropout or not); returns a logit."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
        self.fc1 = nn.Linear(10, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 1)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.relu(self.fc1(x)))
        x = self.dropout(self.relu(self.fc2(x)))
        return self.fc3(x)


class DropoutNet(OverfitNet):
    """The course's network with dropout: :class:`OverfitNet` with ``Dropout(0.5)`` after each hidden ReLU."""

    def __init__(self) -> None:
        super().__init__(dropout=0.5)


class DropoutLesson(BinaryTask):
    """Binary classification of 10-D samples, with or without dropout, to see overfitting happen.

    Args:
        dropout: Probability of zeroing each hidden activation while training (the course uses 0 and 0.5).
    """

    def __init__(
        self,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(OverfitNet(dropout), optimizer=optimizer, scheduler=scheduler)
