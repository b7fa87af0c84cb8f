"""Pictures of what a lesson learned: :class:`LessonPictures` writes them to TensorBoard and as PNG files, and
``gpu-lessons pictures`` draws runs' learning curves side by side."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import PIL.Image
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor

from gpu_lessons.atomic_files import refuse_existing, write_atomically, write_new_file
from gpu_lessons.checkpoint_states import checked_history
from gpu_lessons.safe_checkpoints import load_checkpoint
from gpu_lessons.errors import CommandParser, UserError, run_command
from gpu_lessons.figures import (
    CURVES,
    History,
    Split,
    confusion_matrix_figure,
    decision_boundary_figure,
    fit_figure,
    learning_curves_figure,
    misclassified_figure,
    render,
)
from gpu_lessons.models.tasks import BinaryTask, MulticlassTask, RegressionTask


class LessonPictures(Callback):
    """Draws what a lesson learned, to TensorBoard and as PNGs in ``<log_dir>/pictures/``.

    After ``fit``: the learning curves, and the fitted curve (1-D regression) or decision boundary (2-D binary) over
    the first epoch's training points and the last validation's. After ``test`` of a multiclass lesson: the confusion
    matrix and the misclassified images. Only rank zero draws (what it saw); a picture that fails is a warning.

    Args:
        enabled: Draw the pictures (``--pictures.enabled false`` skips them, e.g. when timing a run).
        max_misclassified: How many misclassified test images to show.
    """

    MAX_POINTS = 10_000  # training samples kept for the fitted curve or boundary

    def __init__(self, enabled: bool = True, max_misclassified: int = 25) -> None:
        self.enabled = enabled
        self.max_misclassified = max_misclassified
        self.history: list[dict[str, float]] = []
        self._val_metrics: dict[str, float] = {}
        self._finished_epoch: Optional[int] = None
        self.folder: Optional[Path] = None  # where the PNG files go: ``<log_dir>/pictures``, once set up with a logger
        self._batches: dict[str, list[tuple[Tensor, ...]]] = {"train": [], "val": [], "test": []}
        self._kept = 0
        self._collecting = False  # during the fit's first epoch only
        self.written: list[Path] = []  # the PNG files of the latest fit or test

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Find the pictures' folder (``trainer.log_dir`` is a collective call under DDP: every rank asks here)."""
        log_dir = trainer.log_dir if trainer.loggers else None
        self.folder = None if log_dir is None else Path(log_dir) / "pictures"

    def _keeps(self, trainer: Trainer) -> bool:
        return self.enabled and self.folder is not None and trainer.is_global_zero

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start collecting the first epoch's points (a regression or binary lesson's, for its picture)."""
        self._batches["train"], self._kept, self._collecting = [], 0, self._keeps(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the epoch that just finished, now that the lesson has logged its metrics."""
        self._record_finished_epoch(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Keep the first epoch's points: references only, nothing read back from the device."""
        if self._collecting and self._kept < self.MAX_POINTS and _is_points(batch):
            self._batches["train"].append((batch[0].detach(), batch[1].detach()))
            self._kept += len(batch[0])

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Collect this validation pass's points afresh."""
        self._batches["val"] = []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep a fit's validation points."""
        if trainer.state.fn == TrainerFn.FITTING and self._keeps(trainer) and _is_points(batch):
            self._batches["val"].append((batch[0].detach(), batch[1].detach()))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note the validation metrics of a fit's epoch (not the sanity check's)."""
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and trainer.is_global_zero:
            self._val_metrics = _epoch_metrics(trainer, "val")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Mark the epoch finished: the lesson logs its metrics after this hook, so they are recorded later."""
        self._finished_epoch = trainer.current_epoch + 1
        self._collecting = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the last epoch and write the fit's pictures."""
        self._record_finished_epoch(trainer)
        self._publish(trainer, pl_module, self._fit_pictures(trainer, pl_module))

    def _record_finished_epoch(self, trainer: Trainer) -> None:
        if self._finished_epoch is not None and trainer.is_global_zero:
            metrics = {**_epoch_metrics(trainer, "train"), **self._val_metrics}
            self.history.append({"epoch": self._finished_epoch, **metrics})
            self._val_metrics = {}
        self._finished_epoch = None

    def state_dict(self) -> dict[str, Any]:
        """The learning curves so far, so that a resumed fit draws them whole."""
        return {"history": self.history}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Record a finished epoch before an epoch-end checkpoint saves the history (the lesson logged it by now)."""
        self._record_finished_epoch(trainer)
        checkpoint["callbacks"][self.state_key] = self.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a checkpoint's learning curves, once checked."""
        self.history = checked_history(state_dict, "the checkpoint's LessonPictures")

    def _fit_pictures(self, trainer: Trainer, pl_module: LightningModule) -> Iterator[tuple[str, Figure]]:
        if self.history:
            run = getattr(trainer.logger, "name", None) or type(pl_module).__name__
            yield "learning_curves", learning_curves_figure({run: self.history})
        if isinstance(pl_module, RegressionTask):
            name, title, features, draw = "fit", "Fitted curve", 1, fit_figure
        elif isinstance(pl_module, BinaryTask):
            name, title, features, draw = "decision_boundary", "Decision boundary", 2, decision_boundary_figure
        else:
            return
        train, val = _points(self._batches["train"]), _points(self._batches["val"])
        if train is None or train[0].shape[1] != features:  # no line or plane to draw these points on
            return

        def predict(inputs: Tensor) -> Tensor:
            with trainer.precision_plugin.forward_context():
                return pl_module.predictions(pl_module(inputs.to(pl_module.device))).float().cpu()

        yield name, draw(predict, train, val, title=f"{title} after {trainer.current_epoch} epochs")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Collect the test's predictions afresh."""
        self._batches["test"] = []

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep a classifier's test images, targets and predicted classes, on the device until the test ends."""
        if isinstance(pl_module, MulticlassTask) and self._keeps(trainer) and isinstance(outputs, Tensor):
            self._batches["test"].append((batch[0].detach(), batch[1].detach(), outputs.detach().argmax(dim=-1)))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the test's pictures: the confusion matrix and the misclassified images."""
        self._publish(trainer, pl_module, self._test_pictures(trainer, pl_module))

    def _test_pictures(self, trainer: Trainer, pl_module: LightningModule) -> Iterator[tuple[str, Figure]]:
        if not isinstance(pl_module, MulticlassTask) or not self._batches["test"]:
            return
        images, targets, preds = (torch.cat(parts) for parts in zip(*self._batches["test"]))
        self._batches["test"] = []
        # Names only where they say more than the number (Fashion-MNIST's "Sneaker", not MNIST's "digit 7").
        names = getattr(trainer.datamodule, "class_names", None)
        names = names if names and not all(name.startswith("digit ") for name in names) else None
        yield "confusion_matrix", confusion_matrix_figure(preds, targets, pl_module.num_classes, names)
        yield "misclassified", misclassified_figure(images, targets, preds, self.max_misclassified, names)

    def _publish(self, trainer: Trainer, pl_module: LightningModule, pictures: Iterator[tuple[str, Figure]]) -> None:
        self.written = []
        if not self._keeps(trainer):
            return
        training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for name, figure in pictures:  # drawn here, in eval mode
                    rgb = render(figure)  # once for both outputs: rendering is the slow part
                    png = self.folder / f"{name}.png"
                    write_atomically(png, lambda file: PIL.Image.fromarray(rgb).save(file, "PNG"))
                    self.written.append(png)
                    for logger in trainer.loggers:
                        if isinstance(logger, TensorBoardLogger):
                            logger.experiment.add_image(f"pictures/{name}", rgb, trainer.global_step, dataformats="HWC")
        except Exception as error:  # a picture is never worth a failed run
            rank_zero_warn(f"LessonPictures could not draw its pictures: {error!r}")
        finally:
            pl_module.train(training)


def _is_points(batch: Any) -> bool:
    """Whether a batch is ``(features [N, 1 or 2], targets)``: points a fitted curve or a boundary can be drawn over."""
    return isinstance(batch, (tuple, list)) and len(batch) >= 2 and batch[0].ndim == 2 and batch[0].shape[1] <= 2


def _points(batches: Sequence[tuple[Tensor, Tensor]]) -> Optional[Split]:
    """The batches' samples, each distinct ``(x, y)`` once (a full-batch epoch repeats them every step)."""
    if not batches:
        return None
    x, y = (torch.cat(parts).float().cpu() for parts in zip(*batches))
    features = x.shape[1]
    rows = torch.unique(torch.cat([x, y.reshape(len(y), -1)], dim=1), dim=0)
    return rows[:, :features], rows[:, features:].reshape(-1, *y.shape[1:])


def _epoch_metrics(trainer: Trainer, stage: str) -> dict[str, float]:
    metrics = trainer.callback_metrics
    return {key: float(metrics[key]) for key in (f"{stage}/{name}" for name in CURVES) if key in metrics}


def compare_runs(checkpoints: Sequence[Union[str, Path]], output: Union[str, Path]) -> Path:
    """Draw the learning curves of several runs one above the other (say ``overfit`` vs ``dropout``) into ``output``.

    The curves come from each run's checkpoint; ``output`` is never overwritten.
    """
    output = refuse_existing(output)  # before the checkpoints are read
    runs: dict[str, History] = {}
    for path in map(Path, checkpoints):
        callbacks = load_checkpoint(path).get("callbacks")
        state = callbacks.get(LessonPictures.__qualname__) if isinstance(callbacks, dict) else None
        history = checked_history(state if isinstance(state, dict) else {}, str(path))
        if not history:
            raise UserError(f"{path} holds no learning curves (it was not written by `gpu-lessons fit`)")
        # checkpoints/overfit/version_0/last.ckpt is the run "overfit/version_0"
        in_version = re.fullmatch(r"version_\d+", path.parent.name) is not None
        runs["/".join(path.parent.parts[-2:]) if in_version else f"{path.parent.name}/{path.stem}"] = history
    png = io.BytesIO()
    PIL.Image.fromarray(render(learning_curves_figure(runs))).save(png, "PNG")
    return write_new_file(output, png.getvalue())


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons pictures") -> int:
    """``gpu-lessons pictures CKPT CKPT... --output compare.png``: runs' learning curves side by side; the exit code."""
    parser = CommandParser(prog=prog, description=compare_runs.__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoints", nargs="+", help="the runs' checkpoints: checkpoints/overfit/version_0/last.ckpt ..."
    )
    parser.add_argument("--output", required=True, help="the PNG file to write (never over an existing file)")

    def compare() -> int:
        args = parser.parse_args(argv)
        print(f"wrote {compare_runs(args.checkpoints, args.output)}")
        return 0

    return run_command(compare)


if __name__ == "__main__":
    raise SystemExit(main())
