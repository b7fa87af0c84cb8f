"""Step 10: a fully connected network reads MNIST digits."""

from __future__ import annotations

from torch import Tensor, nn

from gpu_lessons.models.digits import DigitLesson


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
        x = self.flatten(x)  # [B, 1, 28, 28] -> [B, 784]
        x = self.relu1(self.layer1(x))
        x = self.relu2(self.layer2(x))
        return self.layer3(x)


class MLPLesson(DigitLesson):
    """10-class digit classification with the flat MLP (see :class:`~gpu_lessons.models.digits.DigitLesson`)."""

    net_class = MNISTNet
