"""The package used from anywhere: shipped configs by name, the lessons listing, your own pictures, fine-tuning,
the course's concept-3 Dataset and concept-4 network, and the built wheel installed outside the checkout."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

import gpu_lessons
from gpu_lessons import lessons
from gpu_lessons.cli import LessonCLI
from gpu_lessons.data import ImageFolderDataModule
from gpu_lessons.data.lazy import RandomSamples, random_samples_datamodule
from gpu_lessons.errors import UserError
from gpu_lessons.models import CNNLesson, MNISTClassifier, MNISTClassifierLesson

from .conftest import CONFIGS, REPO
from .helpers import QUIET, run


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["gpu_lessons"])  # else LightningCLI warns that args and sys.argv were both given


def test_the_shipped_configs_are_the_repos_configs() -> None:
    shipped = lessons.shipped_configs()
    assert set(shipped) == {path.stem for path in CONFIGS.glob("*.yaml")}
    for name, path in shipped.items():
        assert path.read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes()


@pytest.mark.parametrize(
    "args",
    [["--config", name] for name in ("cnn", "cnn.yaml", "cnn.yml", "./cnn.yaml", "configs/cnn.yaml")]
    + [["--config=cnn"], ["-c", "cnn"]],
    ids=" ".join,
)
def test_config_by_lesson_name_from_an_empty_folder(args: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = LessonCLI(args=args, run=False)
    assert type(cli.model) is CNNLesson
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "checkpoints" / "cnn"  # output lands here
    assert cli.trainer.logger.name == "cnn"


def test_a_real_file_wins_over_the_shipped_lesson(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((CONFIGS / "cnn.yaml").read_text())
    config["trainer"]["max_epochs"] = 1
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(config))
    assert LessonCLI(args=["--config", "cnn.yaml"], run=False).trainer.max_epochs == 1
    assert LessonCLI(args=["--config", "cnn"], run=False).trainer.max_epochs == 5  # no file named "cnn": the lesson


def test_config_values_that_are_not_lesson_names_go_to_jsonargparse(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnn").mkdir()  # a folder named like a lesson does not hide it
    assert lessons.config_path("cnn") == str(lessons.shipped_configs()["cnn"])
    inline = "trainer: {max_epochs: 1}"
    assert lessons.config_path(inline) == inline
    assert lessons.config_path("{" + "x" * 300 + ": 1}") == "{" + "x" * 300 + ": 1}"  # no "file name too long"
    assert lessons.config_path("elsewhere/cnn.yaml") == "elsewhere/cnn.yaml"  # another folder's path: jsonargparse says
    with pytest.raises(UserError, match="--config cnnn: no such file, and not a shipped lesson; the lessons are regression, "):
        lessons.config_path("cnnn")


def test_the_lessons_table_is_what_the_configs_build(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = {row.name: row for row in map(lessons.describe, lessons.shipped_configs())}
    for name, row in rows.items():
        header = (CONFIGS / f"{name}.yaml").read_text().splitlines()[:3]
        assert header == [f"# {row.step}: {row.shows}", f"# Data: {row.data}", f"# Result: {row.result}"]
        net = LessonCLI(args=["--config", name], run=False).model.net
        assert (row.network, row.parameters) == (type(net).__name__, sum(p.numel() for p in net.parameters()))
    # the course's exact parameter counts
    assert rows["mlp"].parameters == 109_386 and rows["cnn"].parameters == 52_138
    assert rows["mnist_classifier"].parameters == 101_770
    # the README's table is this table
    assert lessons.markdown_table(list(rows.values())) in (REPO / "README.md").read_text()


def test_lessons_command_lists_every_lesson(capsys) -> None:
    assert lessons.main([]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")][:-1]
    assert listed == list(lessons.shipped_configs())
    assert "CNN (52,138)" in out and "99.06 % mean test accuracy" in out


def test_copy_writes_the_config_here_and_never_over_a_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert lessons.main(["--copy", "cnn"]) == 0
    assert (tmp_path / "cnn.yaml").read_bytes() == (CONFIGS / "cnn.yaml").read_bytes()
    (tmp_path / "cnn.yaml").write_text("# mine\n")
    assert lessons.main(["--copy", "cnn"]) == 2
    assert (tmp_path / "cnn.yaml").read_text() == "# mine\n"
    assert lessons.main(["--copy", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: cnn.yaml already exists and was left as it is; delete or rename it, or choose another name",
        f"error: no lesson 'nope'; the lessons are {', '.join(lessons.shipped_configs())}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.yaml"]


def test_version_comes_from_the_installed_metadata_and_annotations_ship() -> None:
    assert gpu_lessons.__version__ == importlib.metadata.version("gpu_lessons")
    assert (Path(gpu_lessons.__file__).parent / "py.typed").is_file()


def test_the_course_concept_4_network() -> None:
    net = MNISTClassifier()
    assert sum(p.numel() for p in net.parameters()) == 101_770
    assert [type(m).__name__ for m in net.children()] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert net(torch.zeros(8, 28, 28)).shape == (8, 10)  # the course's check: one batch of 8 images
    assert isinstance(MNISTClassifierLesson().net, MNISTClassifier)


def test_the_course_concept_3_dataset_is_batched_by_a_real_dataloader() -> None:
    datamodule = random_samples_datamodule(length=10, batch_size=4)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note that pinned memory needs an accelerator
        batches = list(loader)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert all(features.shape == (len(labels), 3) for features, labels in batches)
    assert all(labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1} for _, labels in batches)
    # each sample is made when asked, the same every time
    dataset = RandomSamples(10)
    first, again = dataset[3], dataset[3]
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert not torch.equal(dataset[3][0], dataset[4][0])
    with pytest.raises(IndexError):
        dataset[10]


def _write_pictures(root: Path, per_class: int = 12) -> Path:
    """Two kinds of picture, like digits photographed on white paper: '1' a dark vertical bar, '7' a dark
    horizontal bar (64×64 RGB, so each goes through the MNIST-style conversion), plus one broken file."""
    rng = np.random.default_rng(0)
    for label, bar in (("1", (slice(8, 56), slice(28, 36))), ("7", (slice(28, 36), slice(8, 56)))):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((64, 64, 3), 230, dtype=np.uint8) + rng.integers(0, 20, (64, 64, 3), dtype=np.uint8)
            pixels[bar] = rng.integers(0, 40)
            PIL.Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "7" / "broken.png").write_bytes(b"not a picture")
    return root


def test_image_folder_splits_labels_and_skips_unreadable_files(tmp_path: Path, capsys) -> None:
    datamodule = ImageFolderDataModule(_write_pictures(tmp_path / "my_digits"), val_fraction=0.25, test_fraction=0.25)
    datamodule.setup("fit")
    sizes = {name: len(split[1]) for name, split in datamodule.splits.items()}
    assert sizes == {"train": 12, "val": 6, "test": 6}  # 24 readable pictures, the broken one skipped
    labels = torch.cat([split[1] for split in datamodule.splits.values()])
    assert sorted(labels.tolist()) == [1] * 12 + [7] * 12  # folder names are the digits
    images = datamodule.splits["train"][0]
    assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28)
    assert datamodule.class_names[7] == "digit 7"
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}/my_digits/7/broken.png: cannot read image (not a PNG or JPEG file, or a corrupt one)"
    )
    again = ImageFolderDataModule(tmp_path / "my_digits", val_fraction=0.25, test_fraction=0.25)
    again.setup("fit")
    assert all(torch.equal(again.splits["val"][i], datamodule.splits["val"][i]) for i in range(2))  # seeded split


def test_image_folder_names_other_classes_by_folder(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            PIL.Image.new("L", (28, 28), 40 * i).save(tmp_path / name / f"{i}.png")
    datamodule = ImageFolderDataModule(tmp_path, val_fraction=0, test_fraction=0)
    datamodule.setup("fit")
    assert sorted(datamodule.splits["train"][1].tolist()) == [0, 0, 0, 1, 1, 1]
    assert datamodule.class_names[:3] == ["cat", "dog", "class 2"]
    assert datamodule.val_dataloader() == []


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"0": 2, "1": 0}, "class folder(s) 1 hold no PNG or JPEG files"),
        ({"3": 2}, "needs a subfolder of pictures per class"),
        ({"3": 2, ".hidden": 2}, "it has 1 (3)"),
        ({"3": 2, "12": 2}, "class folders 12, 3 need more than the lesson's 10 classes"),
        ({f"c{i}": 1 for i in range(11)}, "need more than the lesson's 10 classes"),
        ({"7": 2, "07": 2}, "class folders 07, 7 name the same digit twice"),
    ],
)
def test_image_folder_bad_layouts_are_clear_errors(layout: dict, message: str, tmp_path: Path) -> None:
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        for i in range(count):
            PIL.Image.new("L", (28, 28)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImageFolderDataModule(tmp_path).setup("fit")


def test_fine_tune_the_cnn_on_your_own_pictures(tiny_mnist: Path, tmp_path: Path, monkeypatch) -> None:
    """fit on MNIST, then fit again on a folder of pictures starting from those weights (``--init_weights``), test
    and predict on the folder: the README's "Your own data" commands."""
    monkeypatch.chdir(tmp_path)
    _write_pictures(tmp_path / "my_digits")
    mnist = ["--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.val_size", "100", "--trainer.max_epochs", "1"]
    pretrained = run("fit", "cnn", *mnist)
    own = ["--data", "gpu_lessons.data.ImageFolderDataModule", "--data.root", "my_digits", "--data.batch_size", "8"]
    tuned = run("fit", "cnn", *own, "--init_weights", "last", "--trainer.max_epochs", "8",
                "--model.init_args.scheduler", "null", "--model.init_args.optimizer.init_args.lr", "0.003")
    assert Path(tuned.trainer.checkpoint_callback.dirpath).name == "version_1"
    assert tuned.trainer.current_epoch == 8  # a new run: epochs count from 0, not from the MNIST run's
    start = torch.load(Path(pretrained.trainer.checkpoint_callback.dirpath, "last.ckpt"), weights_only=True)["state_dict"]
    assert any(not torch.equal(start[k], v) for k, v in tuned.model.state_dict().items())
    tested = run("test", "cnn", *own, "--ckpt_path", "last")
    assert float(tested.trainer.callback_metrics["test/acc"]) == 1.0


def test_init_weights_loads_the_checkpoints_weights_before_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    trained = run("fit", "regression", "--trainer.max_epochs", "20")
    path = str(Path(trained.trainer.checkpoint_callback.dirpath, "last.ckpt"))
    cli = LessonCLI(args=["--config", "regression", *QUIET, "--init_weights", path], run=False)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in cli.model.state_dict().items())


@pytest.mark.slow
def test_the_built_wheel_works_from_an_empty_folder(tmp_path: Path) -> None:
    """Build the wheel, install it where the checkout is not importable, list the lessons and train one by name."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("gpu_lessons-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "CUDA_VISIBLE_DEVICES": ""}

    def gpu_lessons_command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpu_lessons", *args], cwd=empty, env=env, capture_output=True, text=True)

    where = subprocess.run(
        [sys.executable, "-c", "import gpu_lessons, gpu_lessons.lessons as l; print(gpu_lessons.__file__); "
         "print(l.shipped_configs()['cnn']); print(gpu_lessons.__version__)"],
        cwd=empty, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where[:2]), where  # the wheel's copy, not the checkout's
    assert where[2] == importlib.metadata.version("gpu_lessons")
    listed = gpu_lessons_command("lessons")
    assert listed.returncode == 0 and "mnist_classifier" in listed.stdout, listed.stderr
    fitted = gpu_lessons_command("fit", "--config", "regression", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false")
    assert fitted.returncode == 0, fitted.stderr
    assert (empty / "checkpoints/regression/version_0/last.ckpt").is_file()
    assert (empty / "lightning_logs/regression/version_0/config.yaml").is_file()
    assert not any(site.rglob("*.ckpt")) and not (site / "gpu_lessons" / "checkpoints").exists()
    copied = gpu_lessons_command("lessons", "--copy", "regression")
    assert copied.returncode == 0 and (empty / "regression.yaml").is_file()
