"""The DataModule base every in-memory dataset of the course shares."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import TensorDataset

from gpu_lessons.data.batches import EpochPermutation, ResumableDataLoader
from gpu_lessons.errors import UserError, preview

Split = tuple[Tensor, ...]

# The course's synthetic lessons use a few hundred numbers; 100 million (400 MB of float32) is far past any of them.
MAX_VALUES = 100_000_000
MAX_SEED = 2**32 - 1  # what seed_everything takes (numpy's range); the data's generators take the same


class TensorDataModule(LightningDataModule):
    """A DataModule whose splits (built by :meth:`build_splits`) are tensors placed once on the training device.

    Callbacks and the CLI read ``splits``, ``class_names`` and ``predict_names`` (``None``: numbered).

    Args:
        batch_size: Training batch size; ``None`` trains full-batch, as the course's small lessons do.
        eval_batch_size: Batch size for validation/test/predict; ``None`` means the whole split at once.
        seed: Seeds the data itself (in subclasses) and the shuffling order.
        on_device: Keep the splits on the training device (GPU) instead of copying every batch from the host.
        steps_per_epoch: Full-batch training only: optimizer steps in one epoch, each on the whole training split
            (the course's steps, without the epoch-end work after each).
    """

    def __init__(
        self,
        batch_size: Optional[int] = None,
        eval_batch_size: Optional[int] = None,
        seed: int = 42,
        on_device: bool = True,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {preview(seed)}")
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        if steps_per_epoch > 1 and batch_size is not None:
            raise ValueError(
                f"steps_per_epoch is for full-batch training (batch_size null); with batch_size {batch_size} an epoch "
                "is one pass over the data in mini-batches"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.on_device = on_device
        self.steps_per_epoch = steps_per_epoch
        self.splits: dict[str, Split] = {}
        self.class_names: Optional[list[str]] = None
        self.predict_names: Optional[list[str]] = None

    @staticmethod
    def check_size(values: int, what: str) -> None:
        """Refuse synthetic data of more than :data:`MAX_VALUES` numbers before torch's allocator fails on it."""
        if values > MAX_VALUES:
            raise ValueError(
                f"{what} make {values:,} numbers ({values * 4 / 2**30:,.1f} GiB), more than the {MAX_VALUES:,} that "
                "synthetic data may hold here"
            )

    def build_splits(self) -> dict[str, Split]:
        """The splits as CPU tensors by name (``train``, ``val``, ``test``, ``predict``); deterministic."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the splits on the first call and move them to the training device."""
        splits = self.splits or self.build_splits()
        device = self._device()
        self.splits = {name: tuple(t.to(device) for t in tensors) for name, tensors in splits.items()}

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.on_device and self.trainer is not None else torch.device("cpu")

    def _split(self, name: str) -> Split:
        if name not in self.splits:
            raise RuntimeError(f"{type(self).__name__} has no {name!r} split (did setup() run?)")
        return self.splits[name]

    def _loader(self, tensors: Split, *, train: bool) -> ResumableDataLoader:
        """Training: shuffled, ``steps_per_epoch`` passes, equal shards; otherwise in order, exact shards."""
        if self.trainer is not None and self.trainer.overfit_batches:
            # Lightning would swap in a SequentialSampler, which with batch_size=None serves single samples
            raise UserError("overfit_batches does not work with in-memory data; use --trainer.limit_train_batches")
        dataset = TensorDataset(*tensors)
        rank, num_replicas = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochPermutation(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            # a full batch in the stored order takes the course loop's steps to the bit; under DDP, shuffling leaves
            # out another remainder each epoch
            shuffle=train and (self.batch_size is not None or num_replicas > 1),
            seed=self.seed,
            rank=rank,
            num_replicas=num_replicas,
            even=train,
            passes=self.steps_per_epoch if train else 1,
            device=tensors[0].device,
        )
        # Its own generator: every iter() draws a worker seed, which would otherwise move dropout's global RNG.
        return ResumableDataLoader(dataset, batch_size=None, sampler=sampler, generator=torch.Generator())

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled training batches, a new order every epoch."""
        return self._loader(self._split("train"), train=True)

    def val_dataloader(self) -> ResumableDataLoader:
        """Validation batches in order."""
        return self._loader(self._split("val"), train=False)

    def test_dataloader(self) -> ResumableDataLoader:
        """Test batches in order."""
        return self._loader(self._split("test"), train=False)

    def predict_dataloader(self) -> ResumableDataLoader:
        """Inputs to predict, in order (the ``predict`` split, else the test split)."""
        return self._loader(self._split("predict" if "predict" in self.splits else "test"), train=False)
