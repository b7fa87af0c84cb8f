"""Your own pictures as a dataset: torchvision's ``ImageFolder`` layout, served like MNIST from device memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torchvision.datasets.folder import find_classes, make_dataset

from gpu_lessons.data.images import IMAGE_SUFFIXES, decode_digits, printable
from gpu_lessons.data.mnist import preprocess_batch
from gpu_lessons.data.tensor_datamodule import Split, TensorDataModule
from gpu_lessons.errors import UserError


class ImageFolderDataModule(TensorDataModule):
    """A folder of class subfolders of pictures (``my_digits/0/*.png``, ...), each turned into an MNIST digit as
    ``predict`` does, split into train/val/test with a seeded permutation and normalised like MNIST, for an MNIST
    lesson to fine-tune on. Folders named by digits are those digits' labels (``3/`` and ``7/`` are 3 and 7); other
    names are labelled 0, 1, ... in sorted order. A picture that cannot be read gets one ``error:`` line.

    Args:
        root: The folder of class subfolders.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and predict; ``None`` means a whole split at once.
        val_fraction: Share of the pictures held out for validation (at least one picture when above 0).
        test_fraction: Share held out for testing (at least one picture when above 0).
        seed: Seeds the split and the shuffling order.
        num_classes: How many classes the lesson tells apart (10 for the MNIST lessons); more folders are an error.
        on_device: Keep the pictures on the training device.
    """

    def __init__(
        self,
        root: Union[str, Path],
        batch_size: Optional[int] = 32,
        eval_batch_size: Optional[int] = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 42,
        num_classes: int = 10,
        on_device: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, on_device=on_device)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (some pictures must train), got {val_fraction + test_fraction}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.save_hyperparameters()
        self.hparams.root = str(root)  # plain data, so checkpoints stay loadable with weights_only=True
        self.root = Path(root)

    def build_splits(self) -> dict[str, Split]:
        """The pictures split into train/val/test; also names the classes and the test pictures (predict's)."""
        images, labels, names = self._read_pictures()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        fractions = (self.hparams.test_fraction, self.hparams.val_fraction)
        num_test, num_val = (max(1, round(len(labels) * fraction)) if fraction > 0 else 0 for fraction in fractions)
        if len(labels) - num_test - num_val < 1:
            raise UserError(f"{self.root}: {len(labels)} readable pictures are too few to split into train, val and test")
        test, val, train = order[:num_test], order[num_test : num_test + num_val], order[num_test + num_val :]
        self.predict_names = [names[i] for i in test.tolist()]
        chosen = {"train": train, "val": val, "test": test}
        return {name: (images[indices], labels[indices]) for name, indices in chosen.items() if len(indices)}

    def _read_pictures(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Every picture under ``root``'s class folders as uint8 digits, their labels and their file names."""
        if not self.root.is_dir():
            raise UserError(f"data.root {self.root}: {'not a folder' if self.root.exists() else 'does not exist'}")
        try:
            folders, _ = find_classes(self.root)
        except FileNotFoundError:
            folders = []
        folders = [name for name in folders if not name.startswith(".")]  # .ipynb_checkpoints and the like
        if len(folders) < 2:
            raise UserError(
                f"data.root {self.root} needs a subfolder of pictures per class (my_digits/0/*.png, my_digits/1/*.png, "
                f"...); it has {len(folders)} ({', '.join(folders) or 'none'})"
            )
        by_digit = all(name.isascii() and name.isdecimal() for name in folders)
        class_to_label = {name: int(name) if by_digit else i for i, name in enumerate(folders)}
        if by_digit and len(set(class_to_label.values())) < len(folders):
            raise UserError(f"data.root {self.root}: class folders {', '.join(folders)} name the same digit twice")
        num_classes = self.hparams.num_classes
        if max(class_to_label.values()) >= num_classes:
            raise UserError(
                f"data.root {self.root}: class folders {', '.join(folders)} need more than the lesson's "
                f"{num_classes} classes (data.num_classes)"
            )
        samples = make_dataset(self.root, class_to_label, extensions=IMAGE_SUFFIXES, allow_empty=True)
        found = {label for _, label in samples}
        if empty := [name for name in folders if class_to_label[name] not in found]:
            raise UserError(f"data.root {self.root}: class folder(s) {', '.join(empty)} hold no PNG or JPEG files")
        label_of = {Path(path): label for path, label in samples}
        digits, read = decode_digits(list(label_of))
        labels = [label_of[path] for path in read]
        if len(set(labels)) < 2:
            raise UserError(f"data.root {self.root}: fewer than two classes have a readable picture")
        extra = [f"class {i}" for i in range(len(folders), num_classes)]  # a network's unused outputs get names too
        self.class_names = [f"digit {i}" for i in range(num_classes)] if by_digit else [*folders, *extra]
        return torch.stack(digits), torch.tensor(labels, dtype=torch.long), [printable(path) for path in read]

    def val_dataloader(self) -> Any:
        """The held-out validation pictures (none with ``val_fraction`` 0)."""
        return self._loader(self.splits["val"], train=False) if "val" in self.splits else []

    def test_dataloader(self) -> Any:
        """The held-out test pictures (none with ``test_fraction`` 0)."""
        return self._loader(self.splits["test"], train=False) if "test" in self.splits else []

    def predict_dataloader(self) -> Any:
        """The held-out test pictures, named by ``predict_names``."""
        if "test" not in self.splits:
            raise UserError(f"data.root {self.root}: predict uses the test pictures, and test_fraction is 0")
        return self._loader(self.splits["test"], train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise a batch as the MNIST lessons expect, on its device."""
        return preprocess_batch(batch)
