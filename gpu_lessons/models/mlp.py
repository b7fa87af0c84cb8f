"""Step 10: a fully connected network reads MNIST digits."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gpu_lessons.models.base import Lesson


class MNISTNet(nn.Module):
    """The course's 784 → 128 → 64 → 10 MLP with ReLU (109,386 parameters); returns logits."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu1 = nn.ReLU()
        self.layer2 = nn.Linear(128, 64)
        self.relu2 = nn.ReLU()
        self.layer3 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        x = self.relu1(self.layer1(x))
        x = self.relu2(self.layer2(x))
        return self.layer3(x)


class MLPLesson(Lesson):
    """10-class digit classification with the flat MLP; ``predict`` returns class probabilities.

    Args:
        optimizer: Optimizer factory (the course uses Adam, lr 0.001).
        scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing (the course uses none, ``0``).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            MNISTNet(),
            task="multiclass",
            num_classes=10,
            optimizer=optimizer,
            scheduler=scheduler,
            label_smoothing=label_smoothing,
        )
