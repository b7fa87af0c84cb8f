"""What a new user meets first: the console script, what a run prints, the pictures' names, the export's hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpu_lessons.safe_checkpoints import load_checkpoint

from .conftest import CONFIGS, REPO
from .helpers import run


def _console_script() -> Path:
    """The ``gpu-lessons`` script ``pip install`` put beside this interpreter."""
    script = Path(sys.executable).parent / ("gpu-lessons.exe" if os.name == "nt" else "gpu-lessons")
    assert script.is_file(), f"{script} is missing: install the package (pip install -e .)"
    return script


@pytest.mark.slow
def test_the_console_script_exits_0_after_a_successful_run_and_names_itself(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fit = subprocess.run(
        [str(_console_script()), "fit", "--config", str(CONFIGS / "regression.yaml"), "--trainer.max_epochs", "2",
         "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "LessonCLI object" not in fit.stdout + fit.stderr
    chained = subprocess.run(
        [str(_console_script()), "test", "--config", str(CONFIGS / "regression.yaml"), "--ckpt_path", "last",
         "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert chained.returncode == 0, chained.stderr[-2000:]
    helped = subprocess.run([str(_console_script()), "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: gpu-lessons")
    assert "a beginner's GPU/PyTorch course as PyTorch Lightning lessons" in helped.stdout


def test_a_run_prints_no_advertising_or_noise_and_ends_with_a_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpu_lessons", "fit", "--config", str(CONFIGS / "classifier.yaml"),
         "--trainer.max_epochs", "20", "--trainer.check_val_every_n_epoch", "5", "--trainer.enable_model_summary",
         "true", "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True,
    )
    output = result.stdout + result.stderr
    for noise in ("💡", "litlogger", "litmodels", "LeafSpec", "smaller than the logging interval", "Total Flops"):
        assert noise not in output, noise
    assert "Total params" in output  # the model summary itself stays
    lines = result.stdout.splitlines()
    assert any(line.startswith("after 20 epochs: train/acc ") and "val/loss" in line for line in lines), lines
    assert any(line.startswith("best val/acc of the run: 0.") for line in lines), lines
    assert "pictures: lightning_logs/classifier/version_0/pictures/" in lines
    assert "last checkpoint (the latest epoch): checkpoints/classifier/version_0/last.ckpt" in lines
    assert any(line.startswith("best checkpoint (val/loss ") for line in lines)


def test_last_ckpt_holds_every_epoch_of_the_learning_curves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run("fit", "overfit", "--trainer.max_epochs", "7")
    history = load_checkpoint(tmp_path / "checkpoints/overfit/version_0/last.ckpt")["callbacks"]["LessonPictures"]["history"]
    assert [entry["epoch"] for entry in history] == list(range(1, 8))


def test_predict_writes_no_log_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run("fit", "regression", "--trainer.max_epochs", "2")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run("predict", "regression", "--ckpt_path", "last")
    assert "x = 6 → ŷ = " in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_fashion_pictures_name_the_classes_and_mnist_ones_number_them() -> None:
    from gpu_lessons.figures import confusion_matrix_figure, misclassified_figure

    names = ["T-shirt/top", "Trouser", "Pullover"]
    preds, targets = torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1])
    matrix = confusion_matrix_figure(preds, targets, 3, names)
    assert [label.get_text() for label in matrix.axes[0].get_xticklabels()] == names
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    titles = [ax.get_title() for ax in misclassified_figure(images, targets, preds, 4, names).axes if ax.get_title()]
    assert titles == ["Trouser→Pullover"]
    plain = [ax.get_title() for ax in misclassified_figure(images, targets, preds, 4).axes if ax.get_title()]
    assert plain == ["1→2"]


def test_preprocess_is_exactly_what_the_datamodule_feeds_the_network(tiny_mnist: Path) -> None:
    from gpu_lessons.data import MNISTDataModule, preprocess

    datamodule = MNISTDataModule(data_dir=tiny_mnist, val_size=100, download=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.splits["test"]
    fed, _ = datamodule.on_after_batch_transfer((images[:8], labels[:8]), 0)
    assert torch.equal(preprocess(images[:8], "mnist"), fed)
    assert fed.shape == (8, 1, 28, 28)
    assert torch.allclose(preprocess(torch.full((1, 28, 28), 255, dtype=torch.uint8)), torch.tensor((1 - 0.1307) / 0.3081))
    with pytest.raises(ValueError, match="dataset must be one of"):
        preprocess(images, "cifar")


def test_the_export_prints_how_to_prepare_the_input(tmp_path: Path, monkeypatch, capsys, tiny_mnist: Path) -> None:
    from gpu_lessons.export import main as export_main

    monkeypatch.chdir(tmp_path)
    run("fit", "mlp", "--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.val_size", "100",
        "--data.init_args.download", "false", "--trainer.max_epochs", "1")
    capsys.readouterr()
    assert export_main(["--ckpt_path", "checkpoints/mlp/version_0/last.ckpt", "--output", "mlp.pth"]) == 0
    hint = capsys.readouterr().out
    assert "x = preprocess(images_uint8, 'mnist')  # = (pixels / 255 - 0.1307) / 0.3081" in hint
    # and that hint is right: the plain network on preprocess()d pixels predicts what the lesson predicts
    from gpu_lessons.data import preprocess
    from gpu_lessons.models import MLPLesson, MNISTNet

    net = MNISTNet().eval()
    net.load_state_dict(torch.load("mlp.pth", weights_only=True))
    lesson = MLPLesson.load_from_checkpoint("checkpoints/mlp/version_0/last.ckpt").eval()
    pixels = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net(preprocess(pixels)).softmax(-1), lesson.predict_step(preprocess(pixels), 0))


def test_a_scheduler_lesson_shows_its_learning_rate_and_no_note_about_pictures_that_cannot_apply(tmp_path: Path) -> None:
    """step_lr's point is the learning rate: each epoch's line shows it, and the learning curves draw it; its 4-D
    points have no decision boundary to draw, which is not worth a line."""
    result = subprocess.run(
        [sys.executable, "-m", "gpu_lessons", "fit", "--config", str(CONFIGS / "step_lr.yaml"),
         "--progress_bar.init_args.interval", "0"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True,
    )
    output = result.stdout + result.stderr
    assert "LessonPictures" not in output and "decision boundary" not in output
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.rsplit("train/lr ", 1)[1] for line in epochs] == ["0.1", "0.1", "0.05", "0.05", "0.025", "0.025"]
    history = load_checkpoint(tmp_path / "checkpoints/step_lr/version_0/last.ckpt")["callbacks"]["LessonPictures"]["history"]
    assert [entry["train/lr"] for entry in history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert (tmp_path / "lightning_logs/step_lr/version_0/pictures/learning_curves.png").is_file()
