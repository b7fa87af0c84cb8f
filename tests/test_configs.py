"""Every shipped YAML parses, instantiates, and configures what its name says (in the spirit of LitGPT's config hub test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule

from gpu_lessons import data, models
from gpu_lessons.cli import LessonCLI
from gpu_lessons.models import Lesson, MulticlassTask

from .conftest import CONFIGS, REPO

# config name -> (lesson class, datamodule class, what else the config must say)
EXPECTED = {
    "regression": (models.RegressionLesson, data.LineDataModule, {"model.init_args.activation": "relu"}),
    "activations": (models.RegressionLesson, data.CurveDataModule, {}),
    "classifier": (models.BlobClassifierLesson, data.BlobsDataModule, {"data.init_args.seed": 42}),
    "mlp": (models.MLPLesson, data.MNISTDataModule, {"trainer.max_epochs": 5}),
    "cnn": (models.CNNLesson, data.MNISTDataModule, {"trainer.max_epochs": 5}),
    "mnist_classifier": (models.MNISTClassifierLesson, data.MNISTDataModule, {"trainer.max_epochs": 5}),
    "fashion_mlp": (models.MLPLesson, data.MNISTDataModule, {"data.init_args.dataset": "fashion_mnist"}),
    "fashion_cnn": (models.CNNLesson, data.MNISTDataModule, {"data.init_args.dataset": "fashion_mnist"}),
    "overfit": (models.DropoutLesson, data.RandomFeaturesDataModule, {"model.init_args.dropout": 0.0, "data.init_args.labels": "noise", "data.init_args.num_train": 20}),
    "dropout": (models.DropoutLesson, data.RandomFeaturesDataModule, {"model.init_args.dropout": 0.5, "data.init_args.labels": "pattern", "data.init_args.num_train": 200}),
    "step_lr": (models.SchedulerLesson, data.RandomFeaturesDataModule, {"model.init_args.scheduler.class_path": "torch.optim.lr_scheduler.StepLR", "model.init_args.scheduler.init_args.step_size": 2, "model.init_args.scheduler.init_args.gamma": 0.5}),
    "plateau": (models.SchedulerLesson, data.RandomFeaturesDataModule, {"model.init_args.scheduler.class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau", "model.init_args.scheduler.init_args.patience": 2}),
}

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))


def _lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_every_config_is_known_and_every_lesson_has_a_config() -> None:
    assert {p.stem for p in CONFIG_FILES} >= set(EXPECTED)
    unknown = {p.stem for p in CONFIG_FILES} - set(EXPECTED)
    assert not unknown, f"add {unknown} to EXPECTED so the test checks what they configure"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_instantiates_what_it_configures(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(path.read_text())
    assert raw["trainer"]["accelerator"] == "gpu"
    lesson_class, datamodule_class, expected = EXPECTED[path.stem]
    for key, value in expected.items():
        assert _lookup(raw, key) == value, key

    cli = LessonCLI(args=["--config", str(path)], run=False)
    assert type(cli.model) is lesson_class and isinstance(cli.model, Lesson)
    assert type(cli.datamodule) is datamodule_class and isinstance(cli.datamodule, LightningDataModule)
    assert cli.trainer.max_epochs == raw["trainer"]["max_epochs"]
    checkpoint = cli.trainer.checkpoint_callback
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints" / path.stem
    assert cli.trainer.logger.name == path.stem
    # the optimizer and scheduler the YAML names are the ones the lesson will build
    optimizer_spec = raw["model"]["init_args"]["optimizer"]
    optimizer = cli.model.optimizer_factory(cli.model.parameters())
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}".endswith(optimizer_spec["class_path"].rsplit(".", 1)[-1])
    for name, value in optimizer_spec["init_args"].items():
        built = optimizer.defaults[name]
        assert (list(built) if isinstance(built, tuple) else built) == value, name
    if isinstance(cli.model, MulticlassTask):
        assert cli.model.criterion.label_smoothing == raw["model"]["init_args"].get("label_smoothing", 0.0)
    scheduler_spec = raw["model"]["init_args"].get("scheduler")
    if scheduler_spec is None:
        assert cli.model.scheduler_factory is None
    else:
        length = {"total_steps": 10} if "total_steps" in cli.model.scheduler_factory.keywords else {}  # OneCycleLR
        scheduler = cli.model.scheduler_factory(optimizer, **length)
        assert type(scheduler).__name__ == scheduler_spec["class_path"].rsplit(".", 1)[-1]


def test_the_stated_results_are_the_ranges_the_full_data_check_holds_ci_to() -> None:
    """The configs' Result lines (the lessons table) and tests/full_data_check.py's RESULTS are one set of numbers:
    the range of test accuracy over the seeds its --seeds run measured."""
    import re
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from full_data_check import RESULTS

    for lesson, (floor, low, high) in RESULTS.items():
        result = next(line for line in (CONFIGS / f"{lesson}.yaml").read_text().splitlines() if line.startswith("# Result:"))
        stated = re.search(r"(\d+\.\d\d)–(\d+\.\d\d) % over seeds", result)
        assert stated is not None, result
        assert (float(stated.group(1)), float(stated.group(2))) == (round(low * 100, 2), round(high * 100, 2)), lesson
        mean = float(result.split("# Result: ", 1)[1].split(" %", 1)[0])
        assert low * 100 <= mean <= high * 100 and floor <= low, lesson
