"""The shared lesson for the course's two MNIST networks (steps 10 and 12)."""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gpu_lessons.models.tasks import MulticlassTask


class DigitLesson(MulticlassTask):
    """10-class classification of 28×28 images (MNIST or Fashion-MNIST) with a ``net_class()``, which a lesson sets;
    ``predict`` returns class probabilities.

    Args:
        label_smoothing: Cross-entropy label smoothing (the course uses none, ``0``).
    """

    net_class: ClassVar[type[nn.Module]]

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(self.net_class(), 10, optimizer, scheduler, label_smoothing=label_smoothing)  # 10 classes
