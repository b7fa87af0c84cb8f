"""Step 9: a binary classifier separates two Gaussian blobs."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gpu_lessons.models.tasks import BinaryTask


class BlobClassifierNet(nn.Module):
    """The course's 2 → 16 → 1 classifier with ReLU (65 parameters); returns a logit (the lesson has the sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(2, 16)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.relu(self.layer1(x)))


Classifier = BlobClassifierNet  # the course's name (its Classifier ends in a sigmoid: here, the lesson's)


class BlobClassifierLesson(BinaryTask):
    """Binary classification of 2-D points; ``predict`` returns the probability of class 1."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(BlobClassifierNet(), optimizer=optimizer, scheduler=scheduler)
