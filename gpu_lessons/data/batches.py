"""Batches sliced straight from tensors that already sit on the training device.

For datasets that fit in memory (all of this course's) a ``DataLoader`` with per-item transforms, collation and
host-to-device copies costs far more than the model's arithmetic. Here each split is a few tensors, moved to the
device once, and a batch is one indexing operation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from gpu_lessons.errors import UserError


class EpochPermutation:
    """Which sample indices one rank sees in one epoch.

    The order is a permutation drawn from ``seed + epoch``, so it is reproducible and a run resumed at an epoch
    boundary sees exactly the order the uninterrupted run would have. Lightning calls :meth:`set_epoch` before
    every epoch, as it does for ``DistributedSampler``.

    Under DDP each rank takes a disjoint strided shard. With ``even=True`` (training) the remainder is dropped first
    so every rank gets the same number of samples, and so of batches: unequal counts would hang DDP's gradient
    all-reduce. Evaluation uses ``even=False`` so that every sample is seen exactly once across ranks.
    """

    def __init__(
        self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, even: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.even:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))

    def indices(self, draw: int | None = None) -> Tensor:
        """This rank's indices for the current epoch (a CPU ``int64`` tensor); ``draw`` numbers the permutation
        instead of the epoch (an epoch of several passes over the data draws one per pass)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + (self.epoch if draw is None else draw))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.even:
            order = order[: len(self) * self.world_size]
        return order[self.rank :: self.world_size]


class TensorBatches:
    """An iterable of batches, each a tuple of slices of ``tensors`` taken at the same indices.

    It has ``len()`` (so progress bars, OneCycleLR and ``trainer.estimated_stepping_batches`` work) and a
    ``sampler`` with ``set_epoch``, which Lightning calls each epoch.

    Args:
        tensors: Equal-length tensors, e.g. ``(images, labels)``, on any device; batches stay on that device.
        batch_size: Samples per batch; ``None`` gives one batch with the whole (shard of the) split.
        sampler: The order; defaults to the natural order on one process.
        drop_last: Drop a final batch smaller than ``batch_size``.
        passes: Passes over the data in one epoch, each in the order of its own draw: epoch ``e``'s pass ``p`` is
            the order a one-pass epoch ``e * passes + p`` would have, so the batches are the same ones either way.
    """

    # DataLoader attributes Lightning inspects: it calls ``sampler.set_epoch`` and looks for a batch sampler.
    batch_sampler = None

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int | None,
        sampler: EpochPermutation | None = None,
        drop_last: bool = False,
        passes: int = 1,
    ) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs one or more tensors of equal length")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
        if passes < 1:
            raise ValueError(f"passes must be a positive integer, got {passes}")
        self.tensors = tensors
        self.sampler = sampler or EpochPermutation(len(tensors[0]), shuffle=False)
        self.batch_size = batch_size or max(len(self.sampler), 1)
        self.drop_last = drop_last
        self.passes = passes
        self._yielded = 0  # batches handed out in the current epoch
        self._resume_at = 0  # batches to skip in the next epoch (set by load_state_dict)

    def _batches_per_pass(self, batch_size: int) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(len(self.sampler) / batch_size)

    def __len__(self) -> int:
        return self.passes * self._batches_per_pass(self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        per_pass = self._batches_per_pass(self.batch_size)
        first, self._resume_at = self._resume_at, 0
        self._yielded = first
        order, drawn = None, None
        for n in range(first, len(self)):
            draw, batch = divmod(n, per_pass)
            if draw != drawn:
                order = self.sampler.indices(self.sampler.epoch * self.passes + draw).to(self.tensors[0].device, non_blocking=True)
                drawn = draw
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            self._yielded += 1
            yield tuple(tensor[index] for tensor in self.tensors)

    def state_dict(self) -> dict[str, int]:
        """Where training is in the epoch, so a checkpoint taken mid-epoch resumes at the next unseen batch.

        Lightning fetches no batch ahead from a loader that has a length, so every batch handed out by the time a
        checkpoint is taken has been trained on.
        """
        return {"epoch": self.sampler.epoch, "batches_trained": self._yielded, "batch_size": self.batch_size,
                "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches a resumed epoch has already trained on (the order comes back from the epoch's seed).

        Mid-epoch, the position is a number of batches of the size the run had: with another ``batch_size`` it would
        skip or repeat samples, so that is refused (at an epoch's end any batch size resumes exactly)."""
        self.sampler.set_epoch(state["epoch"])
        saved_size, saved_passes = state.get("batch_size", self.batch_size), state.get("passes", 1)
        batches_then = max(saved_passes * self._batches_per_pass(saved_size), 1)  # the epoch's length in the saved run
        resume_at = state["batches_trained"] % batches_then
        if resume_at and saved_size != self.batch_size:
            raise UserError(
                f"this checkpoint stopped mid-epoch after {state['batches_trained']} batches of {saved_size}; resume it "
                f"with batch_size {saved_size} (not {self.batch_size}), or from a checkpoint taken at an epoch's end"
            )
        if resume_at and saved_passes != self.passes:
            raise UserError(
                f"this checkpoint stopped mid-epoch after {state['batches_trained']} of its {batches_then} steps; resume "
                f"it with steps_per_epoch {saved_passes} (not {self.passes}), or from a checkpoint taken at an epoch's end"
            )
        self._resume_at = resume_at
