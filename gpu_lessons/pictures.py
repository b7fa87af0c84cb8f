"""Pictures of what a lesson learned, for TensorBoard and as PNG files.

The figure builders take tensors (and, where a model is drawn, a ``predict`` callable) and return a matplotlib
:class:`~matplotlib.figure.Figure`, so they work on their own too. :class:`LessonPictures` is the Lightning callback
that picks the pictures for a lesson and writes them.

Figures are built with :class:`~matplotlib.figure.Figure` rather than ``pyplot``: they render with the
non-interactive Agg canvas, never touch a GUI backend or pyplot's global list of open figures, and are freed like
any other object, so there is nothing to close.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import PIL.Image
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from gpu_lessons.atomic_files import refuse_existing, write_atomically, write_new_file
from gpu_lessons.safe_checkpoints import checked_history, load_checkpoint
from gpu_lessons.errors import CommandParser, UserError, run_command
from gpu_lessons.models.tasks import BinaryTask, MulticlassTask, RegressionTask

Predict = Callable[[Tensor], Tensor]
Split = Sequence[Tensor]
History = Sequence[Mapping[str, float]]

__all__ = [
    "LessonPictures",
    "confusion_matrix_figure",
    "decision_boundary_figure",
    "fit_figure",
    "learning_curves_figure",
    "misclassified_figure",
]

_CURVES = {"acc": "accuracy", "loss": "loss"}  # metric name in the logs -> panel title
_CLASS_COLORS = ("tab:blue", "tab:red")  # the ends of the "RdBu_r" colour map: P(class 1) = 0 and 1


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def fit_figure(predict: Predict, train: Split, val: Optional[Split] = None, *, title: str = "Fitted curve") -> Figure:
    """The network's curve y = f(x) over the training points (dots) and validation points (diamonds), 1-D inputs."""
    x, y = (_numpy(t).ravel() for t in train[:2])
    val_x, val_y = (_numpy(t).ravel() for t in val[:2]) if val is not None else (np.empty(0), np.empty(0))
    x_all = np.concatenate([x, val_x])
    pad = 0.05 * (x_all.max() - x_all.min()) or 1.0
    grid = np.linspace(x_all.min() - pad, x_all.max() + pad, 400, dtype=np.float32)

    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = figure.subplots()
    curve = _numpy(predict(torch.from_numpy(grid).unsqueeze(1))).ravel()
    ax.plot(grid, curve, color="tab:blue", linewidth=2, label="network's prediction")
    ax.scatter(x, y, color="tab:orange", edgecolors="black", s=50, zorder=3, label="training points")
    if val is not None:
        ax.scatter(
            val_x, val_y, marker="D", facecolors="none", edgecolors="tab:green", linewidths=2, s=60, zorder=3,
            label="validation points",
        )
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def decision_boundary_figure(
    predict: Predict,
    train: Split,
    val: Optional[Split] = None,
    *,
    title: str = "Decision boundary",
    resolution: int = 200,
) -> Figure:
    """P(class 1) over the plane (``predict`` maps ``[N, 2]`` points to it), the 0.5 boundary, and the points by class.

    Training points are circles, validation points triangles.
    """
    splits = [("train", "o", train)] + ([("val", "^", val)] if val is not None else [])
    points = np.concatenate([_numpy(split[0]) for _, _, split in splits])
    low, high = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * (high - low) + 0.5
    gx, gy = np.meshgrid(*(np.linspace(low[i] - pad[i], high[i] + pad[i], resolution) for i in range(2)))
    probability = _numpy(predict(torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)))
    probability = probability.reshape(gx.shape)

    figure = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = figure.subplots()
    filled = ax.contourf(gx, gy, probability, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.45)
    ax.contour(gx, gy, probability, levels=[0.5], colors="black", linewidths=2)
    figure.colorbar(filled, ax=ax, label="P(class 1)")
    for name, marker, (x, y) in splits:
        x, y = _numpy(x), _numpy(y).ravel()
        for label, color in enumerate(_CLASS_COLORS):
            chosen = y == label
            ax.scatter(
                x[chosen, 0], x[chosen, 1], c=color, marker=marker, edgecolors="black", s=40,
                label=f"class {label} ({name})",
            )
    handles, labels = ax.get_legend_handles_labels()
    boundary = Line2D([], [], color="black", linewidth=2)
    ax.legend([*handles, boundary], [*labels, "P = 0.5"], loc="upper left", fontsize="small")
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
    return figure


def learning_curves_figure(runs: Mapping[str, History]) -> Figure:
    """Train and validation accuracy and loss per epoch: one row per run, so runs (say, without and with dropout)
    can be compared on shared axes.

    Each run's history is a list of per-epoch dicts with ``epoch`` and any of ``train/acc``, ``val/acc``,
    ``train/loss``, ``val/loss`` (as :class:`LessonPictures` records them).
    """
    logged = {key for history in runs.values() for entry in history for key in entry}
    metrics = [m for m in _CURVES if f"train/{m}" in logged or f"val/{m}" in logged]
    losses = [v for history in runs.values() for entry in history for k, v in entry.items() if k.endswith("/loss")]
    figure = Figure(figsize=(5.6 * len(metrics), 4.2 * len(runs)), layout="constrained")
    axes = figure.subplots(len(runs), len(metrics), squeeze=False, sharex="col", sharey="col")
    for row, (run, history) in zip(axes, runs.items()):
        for ax, metric in zip(row, metrics):
            for stage, color in (("train", "tab:blue"), ("val", "tab:orange")):
                key = f"{stage}/{metric}"
                points = [(entry["epoch"], entry[key]) for entry in history if key in entry]
                if not points:
                    continue
                epochs, values = zip(*points)
                last = f"{values[-1]:.1%}" if metric == "acc" else f"{values[-1]:.3g}"
                ax.plot(
                    epochs, values, color=color, marker="o" if len(points) <= 30 else None, markersize=4,
                    label=f"{stage} (last: {last})",
                )
            if metric == "acc":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            elif min(losses) > 0 and max(losses) > 10 * min(losses):
                ax.set_yscale("log")  # losses fall by orders of magnitude; a gap stays visible on a log scale
            ax.set_title(f"{run}: {_CURVES[metric]}")
            ax.set_xlim(left=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    if "acc" in metrics:  # the column shares its y axis; keep it within 0-100 % (plus room for the markers)
        low, high = axes[0, metrics.index("acc")].get_ylim()
        axes[0, metrics.index("acc")].set_ylim(max(low, -0.02), min(high, 1.02))
    return figure


def confusion_matrix_figure(
    preds: Tensor, targets: Tensor, num_classes: int, class_names: Optional[Sequence[str]] = None
) -> Figure:
    """The confusion matrix of predicted class indices against the true ones, with the counts written in; the axes
    name the classes when ``class_names`` is given (Fashion-MNIST's "Ankle boot"), else number them."""
    matrix = MulticlassConfusionMatrix(num_classes=num_classes)(preds.detach().cpu(), targets.detach().cpu()).numpy()
    total, correct = int(matrix.sum()), int(matrix.trace())

    figure = Figure(figsize=(6.4, 5.8), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, label="images", shrink=0.8)
    dark = matrix.max() / 2
    for (true, pred), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > dark else "black"
            ax.text(pred, true, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set(
        xticks=range(num_classes), yticks=range(num_classes), xlabel="predicted class", ylabel="true class",
        title=f"Confusion matrix: {correct} of {total} right ({correct / max(total, 1):.1%})",
    )
    if class_names:
        ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(class_names, fontsize=8)
    return figure


def misclassified_figure(
    images: Tensor, targets: Tensor, preds: Tensor, max_images: int = 25, class_names: Optional[Sequence[str]] = None
) -> Figure:
    """Up to ``max_images`` misclassified images on a square grid, each titled ``true→pred`` (by class name when
    ``class_names`` is given, e.g. ``Shirt→T-shirt/top``).

    ``images`` are ``[N, H, W]`` or ``[N, C, H, W]``, raw or normalised: each is rescaled to its own range for
    display, which undoes any per-dataset normalisation.
    """
    wrong = (preds.detach().cpu() != targets.detach().cpu()).nonzero().flatten()
    side = math.ceil(math.sqrt(max_images))
    figure = Figure(figsize=(1.3 * side, 1.3 * side + 0.5), layout="constrained")
    axes = figure.subplots(side, side, squeeze=False).flatten()
    for ax in axes:
        ax.set_axis_off()
    for ax, index in zip(axes, wrong[:max_images].tolist()):
        image = _numpy(images[index])
        if image.ndim == 3:  # channels first -> height, width, channels
            image = image.transpose(1, 2, 0).squeeze(-1)
        image = (image - image.min()) / max(image.max() - image.min(), 1e-12)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        true, pred = int(targets[index]), int(preds[index])
        title = f"{class_names[true]}→{class_names[pred]}" if class_names else f"{true}→{pred}"
        ax.set_title(title, fontsize=10 if not class_names else 7)
    shown = f", the first {max_images} shown" if len(wrong) > max_images else ""
    figure.suptitle(f"Misclassified: {len(wrong)} of {len(targets)} test images\ntitled true→predicted{shown}")
    return figure


@contextmanager
def _evaluating(module: LightningModule) -> Iterator[None]:
    """Eval mode without gradients, then back to the module's previous mode."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(training)


class LessonPictures(Callback):
    """Draws what a lesson learned, to TensorBoard and as PNGs in ``<log_dir>/pictures/``.

    After ``fit``: the learning curves (train vs validation accuracy and loss per epoch) for every lesson; for a
    :class:`~gpu_lessons.models.RegressionTask` with 1-D inputs the fitted curve over the data; for a
    :class:`~gpu_lessons.models.BinaryTask` with 2-D inputs the decision boundary over the points. After ``test`` of
    a :class:`~gpu_lessons.models.MulticlassTask`: the confusion matrix and the misclassified test images (named by
    the DataModule's ``class_names`` attribute, where it declares one).

    The data comes from the batches Lightning hands to the hooks: the fit's first epoch's training batches (at most
    :attr:`MAX_POINTS` samples, each point drawn once; every later step only checks a flag), the last validation's batches, and the test batches with
    the lesson's ``test_step`` outputs. So any DataModule works; a picture that does not fit the data is skipped
    with a line that says why. Under DDP, rank zero draws what it saw (its shard of each split).

    Only rank zero draws, and a picture that fails to draw is a warning, never a failed run. Without a logger
    nothing is written; loggers other than TensorBoard get only the PNG files.

    Args:
        enabled: Draw the pictures (``--pictures.enabled false`` skips them, e.g. when timing a run).
        max_misclassified: How many misclassified test images to show.
    """

    MAX_POINTS = 10_000  # samples kept from an epoch's training batches for the fitted-curve/boundary pictures

    def __init__(self, enabled: bool = True, max_misclassified: int = 25) -> None:
        self.enabled = enabled
        self.max_misclassified = max_misclassified
        self.history: list[dict[str, float]] = []
        self._val_metrics: dict[str, float] = {}
        self._finished_epoch: Optional[int] = None
        self._log_dir: Optional[str] = None
        self._batches: dict[str, list[tuple[Tensor, ...]]] = {"train": [], "val": [], "test": []}
        self._kept = 0  # training samples kept
        self._collecting = False  # keeping training batches: during the fit's first epoch

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective call under DDP, so every rank asks here rather than rank zero later.
        self._log_dir = trainer.log_dir if trainer.loggers else None

    @property
    def folder(self) -> Optional[Path]:
        """Where the PNG files go: ``<log_dir>/pictures`` (``None`` without a logger)."""
        return None if self._log_dir is None else Path(self._log_dir) / "pictures"

    def _keeps(self, trainer: Trainer) -> bool:
        return self.enabled and self._log_dir is not None and trainer.is_global_zero

    # -- fit: learning curves, and the points for the fitted curve / decision boundary --------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches["train"], self._kept, self._collecting = [], 0, self._keeps(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record_finished_epoch(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # References only (no copy, nothing read back from the device), and only in one epoch: the same points come
        # back every epoch (and, in a full-batch one, every step).
        if self._collecting and self._kept < self.MAX_POINTS and _is_points(batch):
            self._batches["train"].append((batch[0].detach(), batch[1].detach()))
            self._kept += len(batch[0])

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches["val"] = []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._keeps(trainer) and _is_points(batch):
            self._batches["val"].append((batch[0].detach(), batch[1].detach()))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and trainer.is_global_zero:
            self._val_metrics = _epoch_metrics(trainer, "val")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The lesson logs its epoch's training metrics in its own ``on_train_epoch_end``, which Lightning runs after
        # the callbacks' hooks: the epoch is recorded when the next one starts, or when training ends.
        self._finished_epoch = trainer.current_epoch + 1
        self._collecting = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record_finished_epoch(trainer)
        self._publish(trainer, pl_module, self._fit_pictures)

    def _record_finished_epoch(self, trainer: Trainer) -> None:
        if self._finished_epoch is not None and trainer.is_global_zero:
            # Validation, if it ran that epoch, came before the end of the epoch's training.
            entry = {"epoch": self._finished_epoch, **_epoch_metrics(trainer, "train"), **self._val_metrics}
            self.history.append(entry)
            self._val_metrics = {}
        self._finished_epoch = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """An epoch-end checkpoint is written once the lesson has logged the epoch (Lightning runs checkpoint
        callbacks' epoch-end hooks after the module's), so the epoch is complete now: record it before saving.
        (``state_dict`` was collected just before this hook; a mid-epoch save has no finished epoch pending.)"""
        self._record_finished_epoch(trainer)
        checkpoint["callbacks"][self.state_key] = self.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
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
        if train is None or train[0].shape[1] != features:
            seen = "no batches of 1 or 2 features" if train is None else f"inputs of {train[0].shape[1]} features"
            rank_zero_info(f"LessonPictures: no {title.lower()}: it needs inputs of {features} feature(s), and saw {seen}")
            return
        after = f"{title} after {trainer.current_epoch} epochs"
        yield name, draw(_predictor(trainer, pl_module), train, val, title=after)

    # -- test: confusion matrix and misclassified images ------------------------------------------------------

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches["test"] = []

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # The test_step's outputs are a MulticlassTask's class scores; kept on the device until the test ends.
        if isinstance(pl_module, MulticlassTask) and self._keeps(trainer) and isinstance(outputs, Tensor):
            self._batches["test"].append((batch[0].detach(), batch[1].detach(), outputs.detach().argmax(dim=-1)))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._publish(trainer, pl_module, self._test_pictures)

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

    def _publish(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        draw: Callable[[Trainer, LightningModule], Iterator[tuple[str, Figure]]],
    ) -> None:
        if not self._keeps(trainer):
            return
        folder = self.folder
        try:
            with _evaluating(pl_module):
                for name, figure in draw(trainer, pl_module):
                    rgb = render(figure)  # once, for both the PNG and TensorBoard: rendering is the slow part
                    folder.mkdir(parents=True, exist_ok=True)
                    write_atomically(folder / f"{name}.png", lambda file: PIL.Image.fromarray(rgb).save(file, "PNG"))
                    for logger in trainer.loggers:
                        if isinstance(logger, TensorBoardLogger):
                            logger.experiment.add_image(f"pictures/{name}", rgb, trainer.global_step, dataformats="HWC")
        except Exception as error:  # a picture is never worth a failed run
            rank_zero_warn(f"LessonPictures could not draw its pictures: {error!r}")


def _is_points(batch: Any) -> bool:
    """Whether a batch is ``(features [N, 1 or 2], targets)``: points a fitted curve or a boundary can be drawn over."""
    return isinstance(batch, (tuple, list)) and len(batch) >= 2 and batch[0].ndim == 2 and batch[0].shape[1] <= 2


def _points(batches: Sequence[tuple[Tensor, Tensor]]) -> Optional[Split]:
    """The batches' samples, each distinct ``(x, y)`` once (a full-batch epoch hands over the same points every step)."""
    if not batches:
        return None
    x, y = (torch.cat(parts).float().cpu() for parts in zip(*batches))
    features = x.shape[1]
    rows = torch.unique(torch.cat([x, y.reshape(len(y), -1)], dim=1), dim=0)
    return rows[:, :features], rows[:, features:].reshape(-1, *y.shape[1:])


def _epoch_metrics(trainer: Trainer, stage: str) -> dict[str, float]:
    metrics = trainer.callback_metrics
    return {key: float(metrics[key]) for key in (f"{stage}/{name}" for name in _CURVES) if key in metrics}


def _predictor(trainer: Trainer, pl_module: LightningModule) -> Predict:
    """The lesson's predictions (values, P(class 1)) for a batch of inputs, on the CPU."""

    def predict(inputs: Tensor) -> Tensor:
        with trainer.precision_plugin.forward_context():
            return pl_module.predictions(pl_module(inputs.to(pl_module.device))).float().cpu()

    return predict


def render(figure: Figure) -> np.ndarray:
    """The figure's pixels, ``[height, width, 3]`` uint8."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def compare_runs(checkpoints: Sequence[Union[str, Path]], output: Union[str, Path]) -> Path:
    """Draw the learning curves of several runs one above the other (say ``overfit`` vs ``dropout``) into ``output``.

    The curves come from each run's checkpoint, where :class:`LessonPictures` keeps them; ``output`` is never
    overwritten (:class:`~gpu_lessons.errors.OutputExistsError`).
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


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=compare_runs.__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="the runs' checkpoints: checkpoints/overfit/version_0/last.ckpt ...")
    parser.add_argument("--output", required=True, help="the PNG file to write (never over an existing file)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    print(f"wrote {compare_runs(args.checkpoints, args.output)}")
    return 0


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons pictures") -> int:
    """``gpu-lessons pictures CKPT CKPT... --output compare.png``: runs' learning curves side by side; the exit code
    (:mod:`gpu_lessons.errors`)."""
    return run_command(lambda: _compare(_parser(prog).parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
