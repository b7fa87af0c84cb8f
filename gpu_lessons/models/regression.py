"""Steps 7, 8 and 11: a 1→8→1 network learns y = 2x + 1, and why activations matter for curves."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gpu_lessons.models.tasks import RegressionTask

Activation = Literal["none", "relu", "tanh", "sigmoid"]

_ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class SimpleNet(nn.Module):
    """The course's 1 → 8 → 1 network (25 parameters); ``none`` is step 7's straight line, ``relu`` step 11's."""

    def __init__(self, activation: Activation = "relu") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.layer1 = nn.Linear(1, 8)
        self.activation = _ACTIVATIONS[activation]()
        self.layer2 = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.activation(self.layer1(x)))


class LinearNet(SimpleNet):
    """The course's step 8 network without an activation: it can only learn straight lines."""

    def __init__(self) -> None:
        super().__init__("none")


class NonLinearNet(SimpleNet):
    """The course's step 8 network with a ReLU between its layers: it can learn curves."""

    def __init__(self) -> None:
        super().__init__("relu")


class RegressionLesson(RegressionTask):
    """Regression on one input: the line y = 2x + 1 (steps 7, 11) or a curve (step 8).

    Args:
        activation: The non-linearity between the two layers: ``none``, ``relu``, ``tanh`` or ``sigmoid``.
    """

    def __init__(
        self,
        activation: Activation = "relu",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(SimpleNet(activation), optimizer=optimizer, scheduler=scheduler)
