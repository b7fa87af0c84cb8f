"""Figures of what a lesson learned, from tensors (and a ``predict`` callable where a model is drawn).

Built as plain :class:`~matplotlib.figure.Figure` objects, not with ``pyplot``: no GUI backend, nothing to close.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

Predict = Callable[[Tensor], Tensor]
Split = Sequence[Tensor]
History = Sequence[Mapping[str, float]]

__all__ = [
    "confusion_matrix_figure",
    "decision_boundary_figure",
    "fit_figure",
    "learning_curves_figure",
    "misclassified_figure",
    "render",
]

CURVES = {"acc": "accuracy", "loss": "loss", "lr": "learning rate"}  # metric name in the logs -> panel title


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
    """P(class 1) over the plane (``predict`` maps ``[N, 2]`` points to it), the 0.5 boundary, and the points by
    class: training points as circles, validation points as triangles."""
    splits = [("train", "o", train)] + ([("val", "^", val)] if val is not None else [])
    points = np.concatenate([_numpy(split[0]) for _, _, split in splits])
    low, high = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * (high - low) + 0.5
    gx, gy = np.meshgrid(*(np.linspace(low[i] - pad[i], high[i] + pad[i], resolution) for i in range(2)))
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    probability = _numpy(predict(grid)).reshape(gx.shape)

    figure = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = figure.subplots()
    filled = ax.contourf(gx, gy, probability, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.45)
    ax.contour(gx, gy, probability, levels=[0.5], colors="black", linewidths=2)
    figure.colorbar(filled, ax=ax, label="P(class 1)")
    for name, marker, (x, y) in splits:
        x, y = _numpy(x), _numpy(y).ravel()
        for label, color in enumerate(("tab:blue", "tab:red")):  # the ends of "RdBu_r": P(class 1) = 0 and 1
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
    """Train and validation accuracy and loss (and the learning rate, where logged) per epoch, one row per run on
    shared axes. A history is a list of dicts with ``epoch`` and any of ``train/acc``, ``val/loss``, ``train/lr``..."""
    logged = {key for history in runs.values() for entry in history for key in entry}
    metrics = [m for m in CURVES if f"train/{m}" in logged or f"val/{m}" in logged]
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
                if metric == "lr":
                    stage, color = "used in the epoch", "tab:green"
                ax.plot(
                    epochs, values, color=color, marker="o" if len(points) <= 30 else None, markersize=4,
                    label=f"{stage} (last: {last})",
                )
            if metric == "acc":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            elif metric == "lr":
                ax.set_yscale("log", base=2)  # a halving is one step down, whatever the learning rate
            elif min(losses) > 0 and max(losses) > 10 * min(losses):
                ax.set_yscale("log")  # losses fall by orders of magnitude; a gap stays visible on a log scale
            ax.set_title(f"{run}: {CURVES[metric]}")
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
    """The confusion matrix of predicted against true class indices, with the counts written in."""
    matrix = MulticlassConfusionMatrix(num_classes=num_classes)(preds.detach().cpu(), targets.detach().cpu()).numpy()
    total, correct = int(matrix.sum()), int(matrix.trace())

    figure = Figure(figsize=(6.4, 5.8), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, label="images", shrink=0.8)
    for (true, pred), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > matrix.max() / 2 else "black"
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
    """Up to ``max_images`` misclassified images on a square grid, each titled ``true→pred``. ``images`` are
    ``[N, H, W]`` or ``[N, C, H, W]``; each is rescaled to its own range, which undoes any normalisation."""
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


def render(figure: Figure) -> np.ndarray:
    """The figure's pixels, ``[height, width, 3]`` uint8."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]
