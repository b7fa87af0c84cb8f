"""What makes a lesson regression, binary or multiclass classification: its criterion, its metric and how its
network's outputs become predictions, written out once per task. Each lesson subclasses one of these."""

from __future__ import annotations

import functools
from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanSquaredError, MinMetric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from gpu_lessons.models.base import Lesson


class RegressionTask(Lesson):
    """Predict numbers: MSE loss, mean squared error as the metric (lower is better); predictions are the outputs.

    Args:
        net: The network; it returns the predicted values.
        optimizer, scheduler, monitor: As for :class:`~gpu_lessons.models.Lesson`.
    """

    metric_name = "mse"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
    ) -> None:
        # MeanSquaredError only checks shapes: nothing to switch off for the training metric.
        super().__init__(net, nn.MSELoss(), MeanSquaredError(), MeanSquaredError, MinMetric(), optimizer, scheduler, monitor)

    def predictions(self, outputs: Tensor) -> Tensor:
        """The network's values."""
        return outputs


class BinaryTask(Lesson):
    """Two classes: BCE-with-logits loss, accuracy; predictions are P(class 1) per sample.

    Args:
        net: The network; it returns one logit per sample (``[N, 1]``).
        optimizer, scheduler, monitor: As for :class:`~gpu_lessons.models.Lesson`.
    """

    metric_name = "acc"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__(
            net, nn.BCEWithLogitsLoss(), BinaryAccuracy(validate_args=False), BinaryAccuracy, MaxMetric(),
            optimizer, scheduler, monitor,
        )

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The loss on the logits, and the predicted classes for the accuracy: given floats, torchmetrics would
        first check (on the host, a GPU sync) whether they are logits or probabilities."""
        inputs, targets = batch
        outputs = self(inputs)  # 1. forward pass
        loss = self.loss(outputs, targets)  # 2. loss (the sigmoid is inside the criterion)
        return loss, (outputs.squeeze(-1) > 0).detach(), targets

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """BCE with logits on one logit per sample, the 0/1 targets in the logits' dtype."""
        logits = outputs.squeeze(-1)
        return self.criterion(logits, targets.to(logits.dtype))

    def predictions(self, outputs: Tensor) -> Tensor:
        """P(class 1) per sample."""
        return outputs.squeeze(-1).sigmoid()


class MulticlassTask(Lesson):
    """``num_classes`` classes: cross-entropy loss, accuracy; predictions are the class probabilities.

    Args:
        net: The network; it returns one logit per class (``[N, num_classes]``).
        num_classes: How many classes (at least 2).
        optimizer, scheduler, monitor: As for :class:`~gpu_lessons.models.Lesson`.
        label_smoothing: The cross-entropy's target is ``1 - label_smoothing`` on the true class and the rest spread
            evenly (``nn.CrossEntropyLoss(label_smoothing=...)``); it keeps a short, high-learning-rate run from
            becoming over-confident. ``0`` is plain cross-entropy.
    """

    metric_name = "acc"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
        label_smoothing: float = 0.0,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        # "micro": the fraction of samples classified right (torchmetrics' Accuracy default), not a mean per class
        accuracy = functools.partial(MulticlassAccuracy, num_classes=num_classes, average="micro")
        super().__init__(
            net, nn.CrossEntropyLoss(label_smoothing=label_smoothing), accuracy(validate_args=False), accuracy,
            MaxMetric(), optimizer, scheduler, monitor,
        )
        self.num_classes = num_classes

    def predictions(self, outputs: Tensor) -> Tensor:
        """The class probabilities, ``[N, num_classes]``."""
        return outputs.softmax(dim=-1)
