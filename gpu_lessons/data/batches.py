"""Batches sliced straight from tensors on the training device: a ``DataLoader`` with ``batch_size=None`` whose
sampler (:class:`EpochPermutation`) yields whole batches of indices, so a batch is one indexing operation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from gpu_lessons.errors import CheckpointError, UserError, preview


class EpochPermutation(DistributedSampler):
    """This rank's batches of one epoch, each a tensor of sample indices already on the data's ``device``.

    The order is drawn from ``seed + epoch`` exactly as ``DistributedSampler`` draws it, so a resumed run sees the
    uninterrupted run's order; pass ``p`` of ``passes`` in epoch ``e`` has one-pass epoch ``e * passes + p``'s order.
    ``even`` shards (training) drop the remainder so every rank gets as many batches (unequal counts would hang DDP's
    all-reduce); exact ones (evaluation) give every sample to one rank. ``batch_size=None`` is one batch per shard.
    Being a ``DistributedSampler``, Lightning keeps it under DDP instead of wrapping it.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        batch_size: Optional[int] = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
        even: bool = True,
        passes: int = 1,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=even)
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
        if passes < 1:
            raise ValueError(f"passes must be a positive integer, got {passes}")
        if not even:  # exact shards: rank r takes samples r, r + num_replicas, ... (DistributedSampler would pad)
            self.total_size = len(dataset)
            self.num_samples = len(range(rank, self.total_size, num_replicas))
        self.batch_size = batch_size or max(self.num_samples, 1)
        self.passes = passes
        self.device = torch.device(device)
        self._yielded = 0  # batches handed out in the current epoch
        self._resume_at = 0  # batches to skip in the next epoch (set by load_state_dict)

    def indices(self, draw: Optional[int] = None) -> Tensor:
        """This rank's sample indices (CPU ``int64``) for the current epoch, or for permutation number ``draw``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + (self.epoch if draw is None else draw))
            order = torch.randperm(len(self.dataset), generator=generator)
        else:
            order = torch.arange(len(self.dataset))
        return order[self.rank : self.total_size : self.num_replicas]

    def _batches_per_pass(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)

    def __len__(self) -> int:
        """Batches in one epoch."""
        return self.passes * self._batches_per_pass(self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        per_pass = self._batches_per_pass(self.batch_size)
        self._yielded, self._resume_at = self._resume_at, 0
        order, drawn = None, None
        for n in range(self._yielded, len(self)):
            draw, batch = divmod(n, per_pass)
            if draw != drawn:  # the permutation goes to the device once per pass; each batch is a slice of it
                order = self.indices(self.epoch * self.passes + draw).to(self.device, non_blocking=True)
                drawn = draw
            self._yielded += 1
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        """The position in the epoch: batches handed out (as a stateful ``DataLoader`` counts), batch size, passes."""
        return {"epoch": self.epoch, "batches_trained": self._yielded, "batch_size": self.batch_size,
                "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches a resumed epoch has trained on (mid-epoch, only with the same batch size and passes)."""
        check_position(state)
        self.set_epoch(state["epoch"])
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


POSITION_KEYS = {"epoch": 0, "batches_trained": 0, "batch_size": 1, "passes": 1}  # each one's least value
MAX_COUNT = 2**53  # a count beyond this (of batches, epochs, steps) is none Lightning or this sampler wrote


def check_position(state: Any, source: object = "the checkpoint") -> None:
    """Check a position as :meth:`EpochPermutation.state_dict` writes it, else raise :class:`CheckpointError`."""
    if not isinstance(state, dict) or not {"epoch", "batches_trained"} <= set(state) <= set(POSITION_KEYS):
        raise CheckpointError(f"{source}: its position in the epoch is damaged: {preview(state)}")
    for key, value in state.items():
        if isinstance(value, bool) or not isinstance(value, int) or not POSITION_KEYS[key] <= value <= MAX_COUNT:
            raise CheckpointError(f"{source}: its position in the epoch is damaged: its {key} is {preview(value)}")


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose state, which Lightning checkpoints and restores, is its sampler's position."""

    def state_dict(self) -> dict[str, int]:
        """The sampler's position in the epoch."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the sampler's position, from a checkpoint's loop state."""
        self.sampler.load_state_dict(state)
