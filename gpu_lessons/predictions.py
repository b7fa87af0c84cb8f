"""Readable predictions: ``python -m gpu_lessons predict`` prints them and can write them to a CSV file."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from gpu_lessons.atomic_files import refuse_existing, write_new_file
from gpu_lessons.errors import UserError
from gpu_lessons.models.base import batch_inputs
from gpu_lessons.models.tasks import BinaryTask, MulticlassTask, RegressionTask

_MAX_SHOWN_FEATURES = 4  # longer feature vectors (and images) are shown by their name


class PredictionRow(NamedTuple):
    """One sample's prediction: the line a person reads and the same row's CSV columns."""

    text: str
    values: dict[str, Any]


def prediction_rows(
    lesson: LightningModule,
    inputs: Tensor,
    predictions: Tensor,
    names: Sequence[str],
    class_names: Optional[Sequence[str]] = None,
) -> list[PredictionRow]:
    """Readable rows for a batch of ``predict_step`` results, e.g. ``x = 6 → ŷ = 13.00`` or ``point [2.0, 2.0] →
    class 0 (probability 100.00%)``; a sample that is no short feature vector is shown by its entry in ``names``."""
    predictions = predictions.detach().float().cpu()
    shown = [_describe_input(sample, name) for sample, name in zip(inputs.detach().cpu(), names)]
    if isinstance(lesson, RegressionTask):
        return [
            PredictionRow(f"{text} → ŷ = {y:.2f}", {**values, "prediction": y})
            for (text, values), y in zip(shown, map(_short, predictions.squeeze(-1).tolist()))
        ]
    if isinstance(lesson, BinaryTask):  # P(class 1) per sample
        classes = (predictions > 0.5).long()
        confidences = torch.where(classes == 1, predictions, 1 - predictions)
    elif isinstance(lesson, MulticlassTask):  # class probabilities
        confidences, classes = predictions.max(dim=-1)
    else:
        raise UserError(
            f"predictions are printed for a RegressionTask, BinaryTask or MulticlassTask lesson; "
            f"{type(lesson).__name__} is none of them"
        )
    rows = []  # binary or not, the probability shown is that of the predicted class
    for (text, values), c, p in zip(shown, classes.tolist(), map(_short, confidences.tolist())):
        label = class_names[c] if class_names else f"class {c}"
        columns = {**values, "class": c, **({"name": label} if class_names else {}), "probability": p}
        rows.append(PredictionRow(f"{text} → {label} (probability {p:.2%})", columns))
    return rows


def _short(value: float) -> float:
    return float(f"{value:.6g}")  # float32 has ~7 significant digits; don't print the rest as noise


def _describe_input(sample: Tensor, name: str) -> tuple[str, dict[str, Any]]:
    """How a prediction shows its input: ``x = 6``, ``point [2.0, 2.0]``, or the sample's name."""
    if sample.ndim != 1 or len(sample) > _MAX_SHOWN_FEATURES:
        return name, {"input": name}
    values = [_short(v) for v in sample.float().tolist()]
    if len(values) == 1:
        return f"x = {values[0]:g}", {"x": values[0]}
    return f"point {values}", {f"x{i}": v for i, v in enumerate(values, start=1)}


class PredictionPrinter(Callback):
    """Prints one line per prediction, e.g. ``x = 6 → ŷ = 13.00``, and writes every row to ``output`` as CSV.

    Samples are named by the DataModule's ``predict_names`` where it has them, else numbered; classes by its
    ``class_names``.

    Args:
        output: A CSV file to write every row to; an existing file is never overwritten.
        max_lines: Print at most this many rows, then how many more there are.
    """

    def __init__(self, output: Optional[Union[str, Path]] = None, max_lines: int = 20) -> None:
        self.output = None if output is None else refuse_existing(output)
        self.max_lines = max_lines
        self.rows: list[PredictionRow] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check again that ``output`` is new (it may have appeared since, or this printer predicted before)."""
        if stage != "predict":
            return
        if trainer.world_size > 1:  # each process would print its own shard, numbered from 0
            raise UserError("predictions are printed by one process: predict with --trainer.devices 1")
        if self.output is not None:
            refuse_existing(self.output)
        self.rows = []

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Turn the batch's predictions into readable rows, named by picture file or sample number."""
        inputs = batch_inputs(batch)
        first, count = len(self.rows), len(inputs)
        names = getattr(trainer.datamodule, "predict_names", None)
        names = names[first : first + count] if names else [f"sample {i}" for i in range(first, first + count)]
        class_names = getattr(trainer.datamodule, "class_names", None)
        self.rows.extend(prediction_rows(pl_module, inputs, outputs, names, class_names))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the first ``max_lines`` rows (and write them all to ``--output``)."""
        for row in self.rows[: self.max_lines]:
            print(row.text)
        if len(self.rows) > self.max_lines:
            more = len(self.rows) - self.max_lines
            print(f"... and {more} more" + ("" if self.output else " (--output FILE.csv writes them all)"))
        if self.output is not None and self.rows:  # all rows or nothing: built in memory, written atomically
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=list(self.rows[0].values))
            writer.writeheader()
            writer.writerows(row.values for row in self.rows)
            write_new_file(self.output, text.getvalue().encode("utf-8"))
            print(f"{len(self.rows)} predictions written to {self.output}")
