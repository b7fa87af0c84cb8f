"""Regression, binary and multiclass tasks: each one's criterion, metric and predictions; a lesson subclasses one."""

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
    """Predict values: MSE loss and metric (lower is better); ``net`` returns the values."""

    metric_name = "mse"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__(net, nn.MSELoss(), MeanSquaredError(), MeanSquaredError, MinMetric(), optimizer, scheduler, monitor)

    def predictions(self, outputs: Tensor) -> Tensor:
        """The network's values."""
        return outputs


class BinaryTask(Lesson):
    """Two classes: BCE-with-logits loss, accuracy; ``net`` returns one logit per sample (``[N, 1]``)."""

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
        """The loss on the logits, and predicted classes for the accuracy (floats would cost torchmetrics a GPU sync
        to tell logits from probabilities)."""
        loss, outputs, targets = super().model_step(batch)
        return loss, outputs.squeeze(-1) > 0, targets

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """BCE with logits on one logit per sample, the 0/1 targets in the logits' dtype."""
        logits = outputs.squeeze(-1)
        return self.criterion(logits, targets.to(logits.dtype))

    def predictions(self, outputs: Tensor) -> Tensor:
        """P(class 1) per sample."""
        return outputs.squeeze(-1).sigmoid()


class MulticlassTask(Lesson):
    """``num_classes`` classes: cross-entropy loss, accuracy; ``net`` returns one logit per class.

    Args:
        label_smoothing: ``nn.CrossEntropyLoss``'s; it keeps a short high-lr run from over-confidence (0: plain).
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
        # "micro": the fraction of samples classified right, not a mean per class
        accuracy = functools.partial(MulticlassAccuracy, num_classes=num_classes, average="micro")
        super().__init__(
            net, nn.CrossEntropyLoss(label_smoothing=label_smoothing), accuracy(validate_args=False), accuracy,
            MaxMetric(), optimizer, scheduler, monitor,
        )
        self.num_classes = num_classes

    def predictions(self, outputs: Tensor) -> Tensor:
        """The class probabilities, ``[N, num_classes]``."""
        return outputs.softmax(dim=-1)
