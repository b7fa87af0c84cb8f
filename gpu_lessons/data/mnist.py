"""MNIST and Fashion-MNIST through torchvision, served from device-resident uint8 tensors."""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from gpu_lessons.atomic_files import missing_folders, remove_empty_folders, write_atomically
from gpu_lessons.data.images import read_digits
from gpu_lessons.data.tensor_datamodule import Split, TensorDataModule
from gpu_lessons.errors import DatasetError, DatasetMissingError, UserError

Dataset = Literal["mnist", "fashion_mnist"]

# torchvision class and the (mean, std) of its training pixels in [0, 1].
DATASETS: dict[str, tuple[type[datasets.MNIST], float, float]] = {
    "mnist": (datasets.MNIST, 0.1307, 0.3081),
    "fashion_mnist": (datasets.FashionMNIST, 0.2860, 0.3530),
}


def preprocess(images: Tensor, dataset: Dataset = "mnist") -> Tensor:
    """uint8 ``[N, (1,) 28, 28]`` images (or floats in [0, 1]) as the MNIST networks and exported weights take them:
    ``[N, 1, 28, 28]`` floats normalised with the dataset's training mean and std."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    _, mean, std = DATASETS[dataset]
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return (images - mean) / std


def preprocess_batch(batch: Any, dataset: Dataset = "mnist") -> Any:
    """:func:`preprocess` applied to the images of a batch, ``images`` or ``(images, labels, ...)``."""
    images, *rest = batch if isinstance(batch, (tuple, list)) else (batch,)
    images = preprocess(images, dataset)
    return (images, *rest) if rest else images


class MNISTDataModule(TensorDataModule):
    """MNIST (or Fashion-MNIST): the 60,000 training images split into train/val with a seeded permutation, and the
    official 10,000 test images, kept as uint8 tensors on the device and normalised there batch by batch.

    Args:
        data_dir: Folder holding ``MNIST/raw`` (or ``FashionMNIST/raw``); downloaded there if missing.
        dataset: ``mnist`` or ``fashion_mnist``.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict.
        val_size: Training images held out for validation (0 disables validation).
        seed: Seeds the train/val split and the shuffling order.
        download: Download missing files in ``prepare_data`` (needs internet).
        loader: ``tensor`` (fast, device-resident) or ``torchvision`` (the course's DataLoader over PIL images).
        num_workers: DataLoader workers for ``loader="torchvision"``.
        on_device: With ``loader="tensor"``, keep the data on the training device.
        predict_images: A PNG/JPEG picture of any size, or a folder of them, for ``predict`` to classify instead of
            the test set.
    """

    def __init__(
        self,
        data_dir: Union[str, Path] = "data",
        dataset: Dataset = "mnist",
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 42,
        download: bool = True,
        loader: Literal["tensor", "torchvision"] = "tensor",
        num_workers: int = 0,
        on_device: bool = True,
        predict_images: Optional[Union[str, Path]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, on_device=on_device)
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        if loader not in ("tensor", "torchvision"):
            raise ValueError(f"loader must be 'tensor' or 'torchvision', got {loader!r}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.hparams.data_dir = str(data_dir)  # plain data, so checkpoints stay loadable with weights_only=True
        self.hparams.predict_images = None if predict_images is None else str(predict_images)  # likewise
        self.data_dir = Path(data_dir)
        self.dataset_class, self.mean, self.std = DATASETS[dataset]
        self.class_names = [f"digit {i}" for i in range(10)] if dataset == "mnist" else list(self.dataset_class.classes)
        self._torchvision_splits: dict[str, Any] = {}
        self.predict_pictures: Optional[Tensor] = None  # ``predict_images`` as uint8 digits; their files: predict_names

    @property
    def raw_folder(self) -> Path:
        """Where torchvision looks for the four IDX files."""
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def prepare_data(self) -> None:
        """Download the dataset if it is missing (once per node; the only place that touches the network)."""
        if self.hparams.predict_images is not None and self.trainer is not None and self.trainer.predicting:
            return  # predicting predict_images needs no dataset files
        if not self._unpacked() and self.hparams.download:
            made = missing_folders(self.raw_folder)
            try:
                for train in (True, False):
                    self.dataset_class(self.data_dir, train=train, download=True)
            except Exception as error:  # urllib/HTTP/checksum errors all mean the same thing to the user
                remove_empty_folders(made)  # those torchvision made for the files it could not fetch
                # torchvision's message lists every mirror it tried; its last line says why
                reason = next((line.strip() for line in reversed(str(error).splitlines()) if line.strip(" )")), "")
                raise self._missing_error(f"downloading failed ({reason or type(error).__name__})") from None
        if not self._files_present():
            raise self._missing_error("download is disabled" if not self.hparams.download else "download failed")

    def _unpacked(self) -> bool:
        """Unpack ``.gz`` archives beside missing files (Debian's ``dataset-fashion-mnist``, whose re-compressed
        archives torchvision's checksums reject); whether all the files are there now."""
        for name in self._file_names():
            archive, target = self.raw_folder / f"{name}.gz", self.raw_folder / name
            if archive.is_file() and not target.is_file():
                try:
                    with gzip.open(archive, "rb") as packed:
                        write_atomically(target, lambda file: shutil.copyfileobj(packed, file))
                except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
                    raise DatasetError(
                        f"{archive} is damaged ({type(error).__name__}: {error}); delete it and download or copy it again"
                    ) from None
        return self._files_present()

    def _files_present(self) -> bool:
        return all((self.raw_folder / name).is_file() for name in self._file_names())

    def _file_names(self) -> list[str]:
        return [Path(url).stem for url, _ in self.dataset_class.resources]

    def _missing_error(self, reason: str) -> DatasetMissingError:
        name = self.dataset_class.__name__
        hint = (
            "MNIST: any online run leaves them in its data_dir/MNIST/raw, to copy to this machine."
            if name == "MNIST"
            else "Fashion-MNIST: `apt-get install -y dataset-fashion-mnist` and copy /usr/share/datasets/fashion-mnist/"
            "*.gz into that folder."
        )
        return DatasetMissingError(
            f"{name} is not in {self.raw_folder.resolve()} and {reason}. Put the four files "
            f"{', '.join(self._file_names())} (or their .gz archives) there, connect to the internet so "
            f"torchvision can download them, or point data_dir elsewhere. {hint}"
        )

    def _load(self, train: bool, transform: Any = None) -> datasets.MNIST:
        if not self._unpacked():  # prepare_data did not run (a Trainer-less setup) or another node lacks them
            raise self._missing_error("setup never downloads (prepare_data does)")
        try:
            dataset = self.dataset_class(self.data_dir, train=train, transform=transform, download=False)
        except Exception as error:  # torchvision's IDX reader fails with asserts, RuntimeErrors, ValueErrors, ...
            raise self._damaged_error(train, f"{type(error).__name__}: {error}".strip(": ")) from None
        images, labels = dataset.data, dataset.targets
        if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
            raise self._damaged_error(train, f"its images are {list(images.shape[1:])}, not 28×28")
        if len(images) != len(labels):
            raise self._damaged_error(train, f"{len(images)} images but {len(labels)} labels")
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) <= 9):
            raise self._damaged_error(train, f"labels outside 0..9 ({int(labels.min())}..{int(labels.max())})")
        return dataset

    def _damaged_error(self, train: bool, reason: str) -> DatasetError:
        names = [n for n in self._file_names() if n.startswith("train" if train else "t10k")]
        return DatasetError(
            f"{self.dataset_class.__name__} in {self.raw_folder.resolve()} is damaged: {' / '.join(names)} cannot be "
            f"read ({reason}). Delete those files (and their .gz archives) and download or copy them again."
        )

    def _split_indices(self, num_train_images: int) -> tuple[Tensor, Tensor]:
        """Seeded (train, val) indices into the official training images."""
        val_size = self.hparams.val_size
        if val_size >= num_train_images:
            raise UserError(f"val_size={val_size} leaves no training images (the training set has {num_train_images})")
        order = torch.randperm(num_train_images, generator=torch.Generator().manual_seed(self.seed))
        return order[val_size:], order[:val_size]

    def build_splits(self) -> dict[str, Split]:
        """The seeded train/val split of the training images, and the test images."""
        train, test = self._load(train=True), self._load(train=False)
        train_idx, val_idx = self._split_indices(len(train))
        splits = {"train": (train.data[train_idx], train.targets[train_idx]), "test": (test.data, test.targets)}
        if len(val_idx):
            splits["val"] = (train.data[val_idx], train.targets[val_idx])
        return splits

    def setup(self, stage: Optional[str] = None) -> None:
        """Load the splits once (to the training device with ``loader="tensor"``), or only ``predict_images``."""
        if stage == "predict" and self.hparams.predict_images is not None:
            if self.predict_pictures is None:
                self.predict_pictures, self.predict_names = read_digits(self.hparams.predict_images)
            self.predict_pictures = self.predict_pictures.to(self._device())
        elif self.hparams.loader == "tensor":
            super().setup(stage)
        elif not self._torchvision_splits:
            to_tensor = transforms.ToTensor()
            train = self._load(train=True, transform=to_tensor)
            train_idx, val_idx = self._split_indices(len(train))
            self._torchvision_splits = {
                "train": Subset(train, train_idx.tolist()),
                "val": Subset(train, val_idx.tolist()),
                "test": self._load(train=False, transform=to_tensor),
            }

    def _dataloader(self, split: str, *, train: bool) -> Any:
        if self.hparams.loader == "tensor":
            return self._loader(self._split(split), train=train)
        return DataLoader(
            self._torchvision_splits[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> Any:
        """Shuffled training batches (a new seeded order every epoch)."""
        return self._dataloader("train", train=True)

    def val_dataloader(self) -> Any:
        """The held-out part of the training images."""
        return self._dataloader("val", train=False) if self.hparams.val_size else []

    def test_dataloader(self) -> Any:
        """The official 10,000 test images."""
        return self._dataloader("test", train=False)

    def predict_dataloader(self) -> Any:
        """The pictures of ``predict_images`` (uint8, like the splits), else the test images."""
        if self.predict_pictures is not None:
            return self._loader((self.predict_pictures,), train=False)
        return self._dataloader("test", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn a batch of images into normalised ``[B, 1, 28, 28]`` floats, on the device they already sit on."""
        return preprocess_batch(batch, self.hparams.dataset)  # stored uint8, or the torchvision loader's [0, 1] floats
