"""Fundamentals, concept 3: a map-style ``Dataset`` that makes each sample only when asked for it, the pattern for
data that does not fit in memory, served by Lightning's ``LightningDataModule.from_datasets``. (The lessons keep
their small datasets on the device instead: :class:`~gpu_lessons.data.tensor_datamodule.TensorDataModule`.)
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset


class RandomSamples(Dataset[tuple[Tensor, int]]):
    """The course's ``RandomDataset``: ``length`` samples of 3 random features in [0, 1) and a 0/1 label, each made
    when read from a generator seeded by ``(seed, idx)``, so the same every time (the course draws anew)."""

    def __init__(self, length: int, seed: int = 42) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> tuple[Tensor, int]:
        if not 0 <= idx < self.length:
            raise IndexError(f"sample {idx} of a dataset of {self.length}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + idx)
        features = torch.rand(3, generator=generator)
        label = int(torch.randint(0, 2, (), generator=generator))
        return features, label


def random_samples_datamodule(length: int = 10, batch_size: int = 4, seed: int = 42) -> LightningDataModule:
    """A DataModule whose training data is :class:`RandomSamples`, batched (and shuffled) by a real ``DataLoader``."""
    return LightningDataModule.from_datasets(train_dataset=RandomSamples(length, seed), batch_size=batch_size)
