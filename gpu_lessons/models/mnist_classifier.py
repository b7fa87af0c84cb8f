"""Fundamentals, concept 4: the course's first ``nn.Module`` for MNIST, one hidden layer (784 → 128 → 10)."""

from __future__ import annotations

from torch import Tensor, nn

from gpu_lessons.models.digits import DigitLesson


class MNISTClassifier(nn.Module):
    """The course's ``MNISTClassifier``: flatten → 784 → 128 → ReLU → 10 (101,770 parameters); returns logits."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


class MNISTClassifierLesson(DigitLesson):
    """10-class digit classification with the one-hidden-layer network (a :class:`~.digits.DigitLesson`)."""

    net_class = MNISTClassifier
