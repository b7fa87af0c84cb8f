"""Batches sliced straight from tensors that already sit on the training device.

For datasets that fit in memory (all of this course's) a ``DataLoader`` with per-item transforms, collation and
host-to-device copies costs far more than the model's arithmetic. Here each split is a few tensors, moved to the
device once, and a batch is one indexing operation: a real ``DataLoader`` over a ``TensorDataset`` of those tensors,
with ``batch_size=None`` and a sampler (:class:`EpochPermutation`) whose items are whole batches of indices::

    dataset = TensorDataset(images, labels)  # on the GPU
    sampler = EpochPermutation(dataset, batch_size=512, shuffle=True, seed=42, device=images.device)
    loader = ResumableDataLoader(dataset, batch_size=None, sampler=sampler)  # loader[i] = dataset[index tensor]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from gpu_lessons.errors import CheckpointError, UserError, preview


class EpochPermutation(DistributedSampler):
    """This rank's batches of one epoch, each a tensor of sample indices already on the data's device.

    The order is a permutation drawn from ``seed + epoch``, exactly as ``DistributedSampler`` draws it, so it is
    reproducible and a run resumed at an epoch boundary sees the order the uninterrupted run would have. Lightning
    calls :meth:`set_epoch` before every epoch. The permutation goes to the device once per epoch (once per pass);
    each batch is a slice of it.

    Under DDP each rank takes a disjoint strided shard. With ``even=True`` (training) the remainder is dropped first
    (``DistributedSampler``'s ``drop_last=True``), so every rank gets the same number of samples, and so of
    batches: unequal counts would hang DDP's gradient all-reduce. Evaluation uses ``even=False``: no sample is dropped
    or, unlike ``DistributedSampler``, repeated, so every sample is seen exactly once across ranks.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP: with ``use_distributed_sampler`` (the
    default) Lightning wraps only a sampler that is not one, and these shards are already this rank's.

    :meth:`state_dict` is the position in the epoch, for an exact mid-epoch resume (see
    :class:`ResumableDataLoader`).

    Args:
        dataset: What is sampled; only its length is used.
        batch_size: Samples per batch; ``None`` gives one batch with this rank's whole shard.
        shuffle: A new permutation every epoch; otherwise the natural order.
        seed: The permutation of epoch ``e`` is drawn from ``seed + e``.
        rank: This process's rank.
        num_replicas: How many ranks share the data.
        even: Equal-size shards (training) rather than exact ones (evaluation).
        passes: Passes over the data in one epoch, each in the order of its own draw: epoch ``e``'s pass ``p`` is
            the order a one-pass epoch ``e * passes + p`` would have, so the batches are the same ones either way.
        device: Where the index tensors go: the device the data sits on.
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
        self.even = even
        self.batch_size = batch_size or max(self.num_samples, 1)
        self.passes = passes
        self.device = torch.device(device)
        self._yielded = 0  # batches handed out in the current epoch
        self._resume_at = 0  # batches to skip in the next epoch (set by load_state_dict)

    def indices(self, draw: Optional[int] = None) -> Tensor:
        """This rank's sample indices for the current epoch (a CPU ``int64`` tensor); ``draw`` numbers the
        permutation instead of the epoch (an epoch of several passes draws one per pass)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + (self.epoch if draw is None else draw))
            order = torch.randperm(len(self.dataset), generator=generator)
        else:
            order = torch.arange(len(self.dataset))
        return order[self.rank : self.total_size : self.num_replicas]

    def _batches_per_pass(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)

    def __len__(self) -> int:
        """Batches in one epoch (what ``len(DataLoader)`` reports with ``batch_size=None``)."""
        return self.passes * self._batches_per_pass(self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        per_pass = self._batches_per_pass(self.batch_size)
        first, self._resume_at = self._resume_at, 0
        self._yielded = first
        order, drawn = None, None
        for n in range(first, len(self)):
            draw, batch = divmod(n, per_pass)
            if draw != drawn:
                order = self.indices(self.epoch * self.passes + draw).to(self.device, non_blocking=True)
                drawn = draw
            self._yielded += 1
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        """Where training is in the epoch: the batches this sampler has handed out in it, which is the count a
        stateful ``DataLoader`` keeps (torchdata's ``StatefulDataLoader`` counts the same), plus what the count
        means (the batch size and passes)."""
        return {"epoch": self.epoch, "batches_trained": self._yielded, "batch_size": self.batch_size,
                "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches a resumed epoch has already trained on (the order comes back from the epoch's seed).

        Mid-epoch, the position is a number of batches of the size the run had: with another ``batch_size`` it would
        skip or repeat samples, so that is refused (at an epoch's end any batch size resumes exactly)."""
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
    """A checkpoint's position in the epoch, as :meth:`EpochPermutation.state_dict` writes it, or a
    :class:`CheckpointError`: counts for ``epoch`` and ``batches_trained``, a positive ``batch_size`` (a full batch is
    recorded as its size) and ``passes``, nothing else."""
    if not isinstance(state, dict) or not {"epoch", "batches_trained"} <= set(state) <= set(POSITION_KEYS):
        raise CheckpointError(f"{source}: its position in the epoch is damaged: {preview(state)}")
    for key, value in state.items():
        if isinstance(value, bool) or not isinstance(value, int) or not POSITION_KEYS[key] <= value <= MAX_COUNT:
            raise CheckpointError(f"{source}: its position in the epoch is damaged: its {key} is {preview(value)}")


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that resumes mid-epoch: its state is its sampler's (:meth:`EpochPermutation.state_dict`).

    Lightning saves the ``state_dict`` of every training loader that has one in each checkpoint and hands it back
    to ``load_state_dict`` before a resumed epoch's first batch. Nothing else differs from a ``DataLoader``: with
    ``num_workers=0`` it takes one item from the sampler per batch it yields, so the sampler counts the batches
    handed out.
    """

    def state_dict(self) -> dict[str, int]:
        """The sampler's position in the epoch."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the sampler's position, from a checkpoint's loop state."""
        self.sampler.load_state_dict(state)
