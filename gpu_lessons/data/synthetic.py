"""The course's small synthetic datasets, each reproducible from plain numbers and a seed."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from gpu_lessons.data.tensor_datamodule import Split, TensorDataModule
from gpu_lessons.errors import preview


def _column(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


class LineDataModule(TensorDataModule):
    """Points on the line y = slope·x + intercept (steps 7 and 11: y = 2x + 1 on x = 1..5).

    Args:
        slope: The line's slope.
        intercept: The line's intercept.
        train_x: Inputs to train on.
        eval_x: Unseen inputs for validation, test and predict, so ``val/loss`` measures generalisation.
        noise: Standard deviation of Gaussian noise added to the training targets.
        predict_x: Inputs for ``predict``; default ``eval_x``.
        **kwargs: Batching options of :class:`TensorDataModule` (``batch_size``, ``seed``, ...).
    """

    def __init__(
        self,
        slope: float = 2.0,
        intercept: float = 1.0,
        train_x: list[float] = [1.0, 2.0, 3.0, 4.0, 5.0],  # noqa: B006 - never mutated; shown by --help
        eval_x: list[float] = [6.0, 7.0, 10.0],  # noqa: B006
        noise: float = 0.0,
        predict_x: Optional[list[float]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not train_x or not eval_x or predict_x == []:
            raise ValueError("train_x, eval_x and predict_x need at least one value each")
        self.check_size(len(train_x) + len(eval_x) + len(predict_x or ()), "train_x, eval_x and predict_x")
        if not all(math.isfinite(x) for x in (*train_x, *eval_x, *(predict_x or ()))):
            raise ValueError("train_x, eval_x and predict_x must be finite numbers (1e400 is infinite in Python)")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.save_hyperparameters()

    def build_splits(self) -> dict[str, Split]:
        """Noisy training points and exact unseen ones."""
        hp = self.hparams
        x_train, x_eval = _column(hp.train_x), _column(hp.eval_x)
        generator = torch.Generator().manual_seed(self.seed)
        y_train = hp.slope * x_train + hp.intercept + hp.noise * torch.randn(x_train.shape, generator=generator)
        y_eval = hp.slope * x_eval + hp.intercept
        x_predict = x_eval if hp.predict_x is None else _column(hp.predict_x)
        return {"train": (x_train, y_train), "val": (x_eval, y_eval), "test": (x_eval, y_eval), "predict": (x_predict,)}


class CurveDataModule(TensorDataModule):
    """The parabola y = x² on an even grid (step 8): no straight line can fit it. Validation and test use the
    midpoints between the training points.

    Args:
        num_points: Training points on the grid.
        x_min: Left end of the grid.
        x_max: Right end of the grid.
        predict_x: Inputs for ``predict``; default the validation midpoints.
        **kwargs: Batching options of :class:`TensorDataModule`.
    """

    def __init__(
        self,
        num_points: int = 41,
        x_min: float = -2.0,
        x_max: float = 2.0,
        predict_x: Optional[list[float]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_points < 2 or not x_min < x_max:
            raise ValueError(f"need num_points >= 2 and x_min < x_max, got {num_points}, {x_min}, {x_max}")
        self.check_size(2 * num_points + len(predict_x or ()), "num_points and predict_x")
        if predict_x == []:
            raise ValueError("predict_x needs at least one value")
        self.save_hyperparameters()

    def build_splits(self) -> dict[str, Split]:
        """The grid for training, its midpoints for evaluation."""
        hp = self.hparams
        x_train = torch.linspace(hp.x_min, hp.x_max, hp.num_points).unsqueeze(1)
        x_eval = (x_train[1:] + x_train[:-1]) / 2
        evaluation, x_predict = (x_eval, x_eval**2), x_eval if hp.predict_x is None else _column(hp.predict_x)
        return {"train": (x_train, x_train**2), "val": evaluation, "test": evaluation, "predict": (x_predict,)}


class BlobsDataModule(TensorDataModule):
    """Two Gaussian blobs, classes 0 and 1 (step 9); with the defaults the training set is exactly the course's
    (``torch.manual_seed(42)``, 50 points of ``randn + 2`` then 50 of ``randn + 6``), validation and test fresh draws.

    Args:
        center0: Centre of class 0 (the same value on both axes, as in the course).
        center1: Centre of class 1.
        samples_per_class: Training points per class.
        eval_samples_per_class: Validation/test points per class.
        predict_points: Points to classify with ``predict``.
        **kwargs: Batching options of :class:`TensorDataModule`.
    """

    def __init__(
        self,
        center0: float = 2.0,
        center1: float = 6.0,
        samples_per_class: int = 50,
        eval_samples_per_class: int = 50,
        predict_points: list[list[float]] = [[2.0, 2.0], [6.0, 6.0], [1.5, 1.8], [5.5, 6.2]],  # noqa: B006
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if samples_per_class < 1 or eval_samples_per_class < 1:
            raise ValueError("samples_per_class and eval_samples_per_class must be >= 1")
        self.check_size(2 * (samples_per_class + 2 * eval_samples_per_class) * 3, "samples_per_class and eval_samples_per_class")
        if not predict_points or any(len(point) != 2 for point in predict_points):
            raise ValueError(f"predict_points must be [x, y] pairs, got {preview(predict_points)}")
        self.save_hyperparameters()

    def _draw(self, seed: int, per_class: int) -> Split:
        generator = torch.Generator().manual_seed(seed)
        class0 = torch.randn(per_class, 2, generator=generator) + self.hparams.center0
        class1 = torch.randn(per_class, 2, generator=generator) + self.hparams.center1
        return torch.cat([class0, class1]), torch.cat([torch.zeros(per_class), torch.ones(per_class)])

    def build_splits(self) -> dict[str, Split]:
        """Three seeded draws and the points to classify."""
        hp = self.hparams
        sizes = {"train": hp.samples_per_class, "val": hp.eval_samples_per_class, "test": hp.eval_samples_per_class}
        splits = {name: self._draw(self.seed + i, size) for i, (name, size) in enumerate(sizes.items())}
        return {**splits, "predict": (torch.tensor(hp.predict_points, dtype=torch.float32),)}


class RandomFeaturesDataModule(TensorDataModule):
    """Samples x ~ N(0, 1)^num_features with a binary label (steps 13 and 14).

    Args:
        labels: ``pattern``: the learnable rule label = (sum of features > 0); ``noise``: coin flips, which a network
            can only memorise.
        num_features: Features per sample (10 in step 13, 4 in step 14).
        num_train: Training samples.
        num_val: Validation samples (drawn independently).
        num_test: Test samples (drawn independently).
        **kwargs: Batching options of :class:`TensorDataModule`.
    """

    def __init__(
        self,
        labels: Literal["pattern", "noise"] = "pattern",
        num_features: int = 10,
        num_train: int = 200,
        num_val: int = 500,
        num_test: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if labels not in ("pattern", "noise"):
            raise ValueError(f"labels must be 'pattern' or 'noise', got {labels!r}")
        if min(num_features, num_train, num_val, num_test) < 1:
            raise ValueError("num_features, num_train, num_val and num_test must be >= 1")
        self.check_size((num_train + num_val + num_test) * (num_features + 1), "num_train, num_val, num_test × num_features")
        self.save_hyperparameters()

    def _draw(self, seed: int, count: int) -> Split:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, self.hparams.num_features, generator=generator)
        if self.hparams.labels == "noise":
            return x, torch.randint(0, 2, (count,), generator=generator).float()
        return x, (x.sum(dim=1) > 0).float()

    def build_splits(self) -> dict[str, Split]:
        """Three seeded draws."""
        sizes = {"train": self.hparams.num_train, "val": self.hparams.num_val, "test": self.hparams.num_test}
        return {name: self._draw(self.seed + i, size) for i, (name, size) in enumerate(sizes.items())}
