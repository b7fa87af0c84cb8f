"""LessonPictures: each lesson's pictures land in TensorBoard and as PNG files; the figure builders work alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpu_lessons.cli import LessonCLI
from gpu_lessons.data import BlobsDataModule
from gpu_lessons.models import BlobClassifierLesson
from gpu_lessons.figures import confusion_matrix_figure, learning_curves_figure, misclassified_figure
from gpu_lessons.pictures import LessonPictures

from .helpers import run

@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def assert_pictures(log_dir: str, *names: str) -> None:
    """Exactly these pictures are in ``log_dir/pictures`` as PNGs of a readable size, and in TensorBoard."""
    folder = Path(log_dir) / "pictures"
    assert sorted(path.stem for path in folder.glob("*.png")) == sorted(names)
    for name in names:
        with Image.open(folder / f"{name}.png") as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 300
    events = EventAccumulator(log_dir)
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"pictures/{name}" for name in names)


def history(cli: LessonCLI) -> list[dict[str, float]]:
    return next(c for c in cli.trainer.callbacks if isinstance(c, LessonPictures)).history


def test_regression_draws_the_fitted_line() -> None:
    cli = run("fit", "regression", "--trainer.max_epochs", "20", "--trainer.check_val_every_n_epoch", "10")
    assert_pictures(cli.trainer.log_dir, "fit", "learning_curves")
    epochs = history(cli)
    assert [entry["epoch"] for entry in epochs] == list(range(1, 21))
    assert [entry["epoch"] for entry in epochs if "val/loss" in entry] == [10, 20]


def test_classifier_draws_the_decision_boundary() -> None:
    cli = run("fit", "classifier", "--trainer.max_epochs", "50")
    assert_pictures(cli.trainer.log_dir, "decision_boundary", "learning_curves")


def test_overfit_records_train_and_val_curves_per_epoch() -> None:
    cli = run("fit", "overfit", "--trainer.max_epochs", "6", "--trainer.check_val_every_n_epoch", "2")
    assert_pictures(cli.trainer.log_dir, "learning_curves")
    epochs = history(cli)
    assert [entry["epoch"] for entry in epochs] == [1, 2, 3, 4, 5, 6]
    assert all({"train/acc", "train/loss"} <= entry.keys() for entry in epochs)
    assert [entry["epoch"] for entry in epochs if {"val/acc", "val/loss"} <= entry.keys()] == [2, 4, 6]


def test_mnist_draws_the_confusion_matrix_and_misclassified_digits_after_test(tiny_mnist: Path) -> None:
    cli = run(
        "fit", "cnn", "--trainer.max_epochs", "1", "--data.init_args.data_dir", str(tiny_mnist),
        "--data.init_args.val_size", "100", "--data.init_args.download", "false",
    )
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert_pictures(cli.trainer.log_dir, "learning_curves", "confusion_matrix", "misclassified")


def fit_blobs(max_epochs: int = 3, ckpt_path: Optional[Path] = None, **kwargs: Any) -> tuple[Trainer, LessonPictures]:
    pictures = LessonPictures()
    trainer = Trainer(
        accelerator="cpu", max_epochs=max_epochs, callbacks=[pictures], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )
    trainer.fit(BlobClassifierLesson(), datamodule=BlobsDataModule(), ckpt_path=ckpt_path)
    return trainer, pictures


def test_other_loggers_get_the_png_files_only(tmp_path: Path) -> None:
    trainer, _ = fit_blobs(logger=CSVLogger(tmp_path))
    assert sorted(p.name for p in (Path(trainer.log_dir) / "pictures").iterdir()) == [
        "decision_boundary.png", "learning_curves.png",
    ]


def test_without_a_logger_nothing_is_written(tmp_path: Path) -> None:
    _, pictures = fit_blobs(logger=False, default_root_dir=tmp_path)
    assert len(pictures.history) == 3
    assert not any(tmp_path.rglob("*.png"))


def test_a_resumed_run_keeps_its_curves(tmp_path: Path) -> None:
    trainer, _ = fit_blobs(logger=False)
    trainer.save_checkpoint(tmp_path / "epoch3.ckpt")
    _, pictures = fit_blobs(max_epochs=5, ckpt_path=tmp_path / "epoch3.ckpt", logger=False)
    assert [entry["epoch"] for entry in pictures.history] == [1, 2, 3, 4, 5]


def test_a_picture_that_fails_is_a_warning_not_a_failed_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no ink")

    monkeypatch.setattr("gpu_lessons.pictures.decision_boundary_figure", broken)
    with pytest.warns(UserWarning, match="could not draw.*no ink"):
        trainer, _ = fit_blobs(logger=CSVLogger(tmp_path))
    assert [p.name for p in (Path(trainer.log_dir) / "pictures").iterdir()] == ["learning_curves.png"]


def test_learning_curves_compare_runs_row_by_row() -> None:
    def run_history(train_acc: float, val_acc: float) -> list[dict[str, float]]:
        val = {"val/acc": val_acc, "val/loss": 0.7}
        return [{"epoch": e, "train/acc": train_acc, "train/loss": 1 / e, **(val if e % 5 == 0 else {})} for e in range(1, 21)]

    figure = learning_curves_figure({"no dropout": run_history(1.0, 0.5), "dropout 0.5": run_history(0.97, 0.95)})
    assert [ax.get_title() for ax in figure.axes] == [
        "no dropout: accuracy", "no dropout: loss", "dropout 0.5: accuracy", "dropout 0.5: loss",
    ]
    assert figure.axes[0].get_legend_handles_labels()[1] == ["train (last: 100.0%)", "val (last: 50.0%)"]


def test_confusion_matrix_and_misclassified_digits() -> None:
    targets = torch.tensor([0, 1, 2, 2, 1])
    preds = torch.tensor([0, 2, 2, 2, 1])
    figure = confusion_matrix_figure(preds, targets, num_classes=3)
    ax = figure.axes[0]
    assert sorted((int(t.get_position()[1]), int(t.get_position()[0]), t.get_text()) for t in ax.texts) == [
        (0, 0, "1"), (1, 1, "1"), (1, 2, "1"), (2, 2, "2"),  # (true, predicted, count)
    ]
    assert ax.get_title() == "Confusion matrix: 4 of 5 right (80.0%)"

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    figure = misclassified_figure(images, targets, preds, max_images=4)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["1→2"]
    assert len(figure.axes) == 4  # a 2×2 grid


def test_overfit_and_dropout_runs_compared_side_by_side(tmp_path: Path, capsys) -> None:
    from gpu_lessons.pictures import main as pictures_main

    run("fit", "overfit", "--trainer.max_epochs", "20")
    run("fit", "dropout", "--trainer.max_epochs", "20")
    checkpoints = ["checkpoints/overfit/version_0/last.ckpt", "checkpoints/dropout/version_0/last.ckpt"]
    assert pictures_main([*checkpoints, "--output", "compare.png"]) == 0
    single = Image.open(next(Path("lightning_logs/overfit").rglob("learning_curves.png")))
    compared = Image.open("compare.png")
    assert compared.width >= 300 and compared.height > single.height  # one row of panels per run
    before = Path("compare.png").read_bytes()
    assert pictures_main([*checkpoints, "--output", "compare.png"]) == 2  # never overwritten
    assert Path("compare.png").read_bytes() == before
    torch.save({"state_dict": {}}, "bare.ckpt")
    assert pictures_main(["bare.ckpt", "--output", "other.png"]) == 2
    assert "holds no learning curves" in capsys.readouterr().err


def test_the_test_subcommand_says_where_its_pictures_went(tiny_mnist: Path, capsys) -> None:
    data = ["--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.val_size", "100", "--data.init_args.download", "false"]
    run("fit", "cnn", "--trainer.max_epochs", "1", *data)
    run("test", "cnn", "--ckpt_path", "last", *data)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pictures: ")]
    assert printed[-1] == (
        "pictures: lightning_logs/cnn/version_1/pictures/confusion_matrix.png, "
        "lightning_logs/cnn/version_1/pictures/misclassified.png"
    )
    assert all(Path(path).is_file() for path in printed[-1].removeprefix("pictures: ").split(", "))


def test_help_lists_every_subcommand_and_the_version_and_each_subcommand_says_what_it_does(capsys) -> None:
    from gpu_lessons.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in ("fit", "validate", "test", "predict", "lessons", "export", "pictures", "doctor", "--version"):
        assert f"`{name}" in text or f"gpu-lessons {name}" in text or f"gpu- lessons {name}" in text, name
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gpu-lessons test: one pass over the test set, with a checkpoint (--ckpt_path last)." in text
