"""Readable predictions: ``python -m gpu_lessons predict`` prints them and can write them to a CSV file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch import Callback, LightningModule, Trainer

from gpu_lessons.checkpointing import write_atomically
from gpu_lessons.errors import UserError
from gpu_lessons.models.base import PredictionRow, batch_inputs


class PredictionPrinter(Callback):
    """Prints one line per prediction, e.g. ``x = 6 → ŷ = 13.00``, and writes every row to ``output`` as CSV.

    The lesson turns each batch into rows (:meth:`~gpu_lessons.models.Lesson.prediction_rows`). Samples are named by
    the DataModule's ``predict_names`` where it has them (image files), otherwise numbered; classes by its
    ``class_names`` where it has them. Lightning's own return of the predictions is unaffected.

    A plain callback, not a ``BasePredictionWriter``: what that adds, batch indices, needs a ``DataLoader``, and
    without one (:class:`~gpu_lessons.data.TensorBatches`) Lightning warns on every run.

    Args:
        output: A CSV file to write every row to; an existing file is never overwritten.
        max_lines: Print at most this many rows, then how many more there are.
    """

    def __init__(self, output: Optional[Union[str, Path]] = None, max_lines: int = 20) -> None:
        self.output = None if output is None else Path(output)
        self.max_lines = max_lines
        self.rows: list[PredictionRow] = []
        self._check_output()

    def _check_output(self) -> None:
        if self.output is not None and self.output.exists():
            raise UserError(f"{self.output} already exists; delete it or choose another --output")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if trainer.world_size > 1:  # each process would print its own shard, numbered from 0
            raise UserError("predictions are printed by one process: predict with --trainer.devices 1")
        self._check_output()  # again: the file may have appeared since, or this printer predicted before
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
        inputs = batch_inputs(batch)
        first, count = len(self.rows), len(inputs)
        names = getattr(trainer.datamodule, "predict_names", None)
        names = names[first : first + count] if names else [f"sample {i}" for i in range(first, first + count)]
        class_names = getattr(trainer.datamodule, "class_names", None)
        self.rows.extend(pl_module.prediction_rows(inputs, outputs, names, class_names))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for row in self.rows[: self.max_lines]:
            print(row.text)
        if len(self.rows) > self.max_lines:
            more = len(self.rows) - self.max_lines
            print(f"... and {more} more" + ("" if self.output else " (--output FILE.csv writes them all)"))
        if self.output is not None and self.rows:
            self._write_csv(self.output)
            print(f"{len(self.rows)} predictions written to {self.output}")

    def _write_csv(self, path: Path) -> None:
        """All rows, or nothing: the CSV is built in memory and written atomically, never over an existing file."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(self.rows[0].values))
        writer.writeheader()
        writer.writerows(row.values for row in self.rows)
        data = text.getvalue().encode("utf-8")
        try:
            write_atomically(path, lambda file: file.write(data), overwrite=False)
        except FileExistsError:
            raise UserError(f"{path} appeared while predicting; it was left as it is") from None
        except OSError as error:
            raise UserError(f"cannot write {path}: {error}") from None
