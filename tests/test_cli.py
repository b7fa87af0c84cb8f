"""The CLI end to end: fit -> checkpoint -> test -> load in another process; logs, help, GPU fallback, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

from gpu_lessons import cli as cli_module
from gpu_lessons import cuda
from gpu_lessons.callbacks import CudaRuntimeCheckOnCpu, FiniteLossGuard, RandomStates
from gpu_lessons.checkpointing import AtomicCheckpointIO, CheckpointOnSigterm, ConfinedCheckpoint, LessonCheckpoint
from gpu_lessons.safe_checkpoints import load_checkpoint
from gpu_lessons.cli import LessonCLI
from gpu_lessons.models import MLPLesson
from gpu_lessons.predictions import PredictionPrinter

from .conftest import CONFIGS, REPO
from .helpers import metric, run

TINY = [
    "--trainer.max_epochs", "2", "--data.init_args.val_size", "100", "--data.init_args.download", "false",
    "--data.init_args.batch_size", "128",
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_fit_checkpoint_test_and_load_elsewhere(workdir: Path, tiny_mnist: Path) -> None:
    data = ["--data.init_args.data_dir", str(tiny_mnist)]
    fitted = run("fit", "mlp", *TINY, *data)
    checkpoints = sorted(p.name for p in (workdir / "checkpoints" / "mlp" / "version_0").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # best on val/loss + last
    assert isinstance(fitted.trainer.checkpoint_callback, LessonCheckpoint)
    assert load_checkpoint(workdir / "checkpoints/mlp/version_0/last.ckpt")["global_step"] == fitted.trainer.global_step
    # OneCycleLR got its total steps from the trainer and steps every batch
    scheduler_config = fitted.trainer.lr_scheduler_configs[0]
    assert scheduler_config.interval == "step"
    assert scheduler_config.scheduler.total_steps == fitted.trainer.estimated_stepping_batches == 2 * 4  # 500 images, batch 128

    fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, verbose=False)
    accuracy_after_fit = metric(fitted, "test/acc")
    tested = run("test", "mlp", *TINY, *data, "--ckpt_path", "checkpoints/mlp/version_0/last.ckpt")
    assert metric(tested, "test/acc") == accuracy_after_fit

    # A fresh process with no CLI loads the checkpoint and predicts exactly what the trained model predicts.
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.save(images, workdir / "images.pt")
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from gpu_lessons.models import MLPLesson\n"
        "model = MLPLesson.load_from_checkpoint('checkpoints/mlp/version_0/last.ckpt', map_location='cpu').eval()\n"
        "with torch.no_grad(): torch.save(model.predict_step(torch.load('images.pt'), 0), 'predictions.pt')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=workdir)
    model = fitted.model.eval().cpu()
    with torch.no_grad():
        expected = model.predict_step(images, 0)
    assert torch.equal(torch.load(workdir / "predictions.pt"), expected)
    assert isinstance(MLPLesson.load_from_checkpoint(workdir / "checkpoints/mlp/version_0/last.ckpt"), MLPLesson)


class GetsWorse(LightningModule):
    """Validation loss rises every epoch: only epoch 0 is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _defaults(*args: str) -> Namespace:
    """The config the CLI builds for the regression lesson, with ``args``, as ``--print_config`` shows it."""
    with mock.patch.object(sys, "argv", ["gpu_lessons"]):
        return LessonCLI(args=["--config", "regression", *args], run=False).config


@pytest.mark.parametrize("on_train_epoch_end", [False, True])
def test_last_checkpoint_is_the_latest_epoch_even_when_validation_gets_worse(
    workdir: Path, on_train_epoch_end: bool
) -> None:
    """Lightning 2.6's save_last writes last.ckpt only beside a new best; the CLI's last_checkpoint writes it every
    epoch, whenever the best checkpoint is saved (after validation, or at the training epoch's end)."""
    config = _defaults()
    best = LessonCheckpoint(**{**config.checkpoint, "dirpath": "ckpts", "save_on_train_epoch_end": on_train_epoch_end})
    latest = ModelCheckpoint(**{**config.last_checkpoint, "dirpath": "ckpts"})
    trainer = Trainer(
        max_epochs=3, callbacks=[best, latest], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = torch.ones(4, 2, 1)
    trainer.fit(GetsWorse(), train_dataloaders=batches, val_dataloaders=batches)
    last = load_checkpoint(workdir / "ckpts" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * 4)
    assert Path(best.best_model_path).name == "epoch000-val_loss0.0000.ckpt"  # the best is still the first epoch
    assert sorted(p.name for p in (workdir / "ckpts").iterdir()) == ["epoch000-val_loss0.0000.ckpt", "last.ckpt"]


@pytest.mark.parametrize("save_last", [True, "link"])
def test_save_last_on_the_best_checkpoint_is_refused_with_the_reason(save_last: object) -> None:
    with pytest.raises(ValueError, match="written every epoch by last_checkpoint"):
        LessonCheckpoint(monitor="val/loss", save_last=save_last)


# What the CLI adds to the trainer, each a key of the config: its class, or how to spot it in the built trainer.
CLI_DEFAULTS = {
    "sigterm_checkpoint": "gpu_lessons.checkpointing.CheckpointOnSigterm",
    "finite_loss_guard": "gpu_lessons.callbacks.FiniteLossGuard",
    "random_states": "gpu_lessons.callbacks.RandomStates",
    "cpu_cuda_check": "gpu_lessons.callbacks.CudaRuntimeCheckOnCpu",
    "lr_monitor": "lightning.pytorch.callbacks.LearningRateMonitor",
    "progress_bar": "gpu_lessons.progress.EpochLines",  # output is not a terminal under pytest
    "predictions": "gpu_lessons.predictions.PredictionPrinter",
}


def test_every_callback_and_plugin_the_cli_adds_is_in_the_config(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info, mock.patch.object(sys, "argv", ["gpu_lessons"]):
        cli_module.cli_main(["fit", "--config", "regression", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, class_path in CLI_DEFAULTS.items():
        assert printed[key]["class_path"] == class_path, key
    assert printed["lr_monitor"]["init_args"]["logging_interval"] == "epoch"
    assert printed["checkpoint"]["monitor"] == "val/loss" and not printed["checkpoint"]["save_last"]
    assert printed["last_checkpoint"]["filename"] == "last" and printed["last_checkpoint"]["monitor"] is None
    assert printed["pictures"]["enabled"] is True
    assert printed["trainer"]["plugins"] == [{"class_path": "gpu_lessons.checkpointing.AtomicCheckpointIO"}]

    with mock.patch.object(sys, "argv", ["gpu_lessons"]):
        trainer = LessonCLI(args=["--config", "regression"], run=False).trainer
    assert {class_path.rsplit(".", 1)[1] for class_path in CLI_DEFAULTS.values()} <= {
        type(c).__name__ for c in trainer.callbacks
    }
    assert [type(c) for c in trainer.checkpoint_callbacks] == [LessonCheckpoint, ConfinedCheckpoint]
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_each_callback_and_plugin_the_cli_adds_can_be_switched_off_from_the_config(workdir: Path) -> None:
    switched_off = {key: None for key in CLI_DEFAULTS}
    switched_off.update(
        {"last_checkpoint": {"save_top_k": 0}, "pictures": {"enabled": False}, "trainer": {"plugins": None}}
    )
    (workdir / "off.yaml").write_text(yaml.safe_dump(switched_off))
    with mock.patch.object(sys, "argv", ["gpu_lessons"]):
        cli = cli_module.cli_main(["fit", "--config", "step_lr", "--config", "off.yaml", "--trainer.max_epochs", "2"])
    added = (
        CheckpointOnSigterm, FiniteLossGuard, RandomStates, CudaRuntimeCheckOnCpu, LearningRateMonitor, ProgressBar,
        PredictionPrinter,
    )  # fmt: skip
    assert not [c for c in cli.trainer.callbacks if isinstance(c, added)]
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
    run_folder = workdir / "checkpoints/step_lr/version_0"
    assert [p.name for p in run_folder.iterdir()] == [Path(cli.trainer.checkpoint_callback.best_model_path).name]
    assert "RandomStates" not in load_checkpoint(cli.trainer.checkpoint_callback.best_model_path)["callbacks"]
    assert not (workdir / "lightning_logs/step_lr/version_0/pictures").exists()


def test_without_a_logger_or_progress_bar_their_callbacks_are_left_out(workdir: Path) -> None:
    config = _defaults("--trainer.logger", "false", "--trainer.enable_progress_bar", "false")
    assert config.lr_monitor is None and config.progress_bar is None
    run("fit", "step_lr", "--trainer.max_epochs", "1", "--trainer.logger", "false")  # LearningRateMonitor would fail


def test_a_runs_config_yaml_runs_it_again_into_the_next_folders(workdir: Path) -> None:
    """config.yaml holds every setting of the run, callbacks included, but not the folders picked for it."""
    first = run("fit", "step_lr", "--trainer.max_epochs", "2")
    saved = workdir / "lightning_logs/step_lr/version_0/config.yaml"
    with mock.patch.object(sys, "argv", ["gpu_lessons"]):
        again = cli_module.cli_main(["fit", "--config", str(saved)])
    assert again.config.fit.run_name == "step_lr" and again.trainer.max_epochs == 2
    assert [type(c) for c in again.trainer.callbacks] == [type(c) for c in first.trainer.callbacks]
    before, after = (load_checkpoint(workdir / f"checkpoints/step_lr/version_{n}/last.ckpt") for n in (0, 1))
    assert before["global_step"] == after["global_step"] == 2
    for name, tensor in before["state_dict"].items():
        assert torch.equal(tensor, after["state_dict"][name]), name
    assert (workdir / "lightning_logs/step_lr/version_1/config.yaml").is_file()


def test_every_run_gets_its_own_log_folder_with_its_config(workdir: Path) -> None:
    for version in range(2):  # re-running must not fail on an existing config.yaml
        run("fit", "step_lr", "--trainer.max_epochs", "1")
        assert (workdir / "lightning_logs" / "step_lr" / f"version_{version}" / "config.yaml").is_file()


def test_config_is_never_overwritten_in_a_fixed_log_folder(workdir: Path) -> None:
    fixed = ["--trainer.logger.init_args.version", "fixed"]
    run("fit", "step_lr", "--trainer.max_epochs", "1", *fixed)
    first = (workdir / "lightning_logs/step_lr/fixed/config.yaml").read_bytes()
    # only a resume from its own checkpoints may write into a run's fixed folder again
    run("fit", "step_lr", "--trainer.max_epochs", "2", *fixed, "--ckpt_path", "checkpoints/step_lr/fixed/last.ckpt")
    assert (workdir / "lightning_logs/step_lr/fixed/config.yaml").read_bytes() == first
    assert (workdir / "lightning_logs/step_lr/fixed/config-1.yaml").is_file()


def test_run_name_names_the_folders(workdir: Path) -> None:
    run("fit", "step_lr", "--trainer.max_epochs", "1", "--run_name", "my_experiment")
    assert (workdir / "checkpoints" / "my_experiment" / "version_0" / "last.ckpt").is_file()
    assert (workdir / "lightning_logs" / "my_experiment" / "version_0").is_dir()


def test_gpu_config_falls_back_to_cpu_with_one_line_saying_why(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cli = run("fit", "step_lr", "--trainer.max_epochs", "1")
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    lines = [line for line in capsys.readouterr().err.splitlines() if "gpu_lessons:" in line]
    assert len(lines) == 1
    assert "'gpu' -> 'cpu'" in lines[0] and "--strict_accelerator true" in lines[0]


def test_strict_accelerator_turns_the_fallback_into_a_clear_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "step_lr", "--strict_accelerator", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: accelerator 'gpu' was requested") and "Traceback" not in err
    assert not (workdir / "lightning_logs").exists()


def test_the_fallback_reason_tells_cpu_only_builds_from_missing_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "no CUDA support" in cuda.cuda_unavailable_reason()
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert "sees no GPU" in cuda.cuda_unavailable_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda.cuda_unavailable_reason() is None


def test_missing_checkpoint_is_reported_before_anything_is_built(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("test", "classifier", "--ckpt_path", "checkpoints/classifier/nope.ckpt")
    assert exit_info.value.code == 2
    assert "error: checkpoints/classifier/nope.ckpt: no such checkpoint file" in capsys.readouterr().err


def test_missing_mnist_is_one_error_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "cnn", "--data.init_args.data_dir", str(workdir / "empty"), "--data.init_args.download", "false")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: MNIST is not in" in err and "t10k-images-idx3-ubyte" in err


def test_print_config_and_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "cnn", "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: gpu_lessons.models.CNNLesson" in printed and "batch_size: 512" in printed

    with pytest.raises(SystemExit), mock.patch.object(sys, "argv", ["gpu_lessons"]):
        cli_module.cli_main(["fit", "--data.help", "gpu_lessons.data.MNISTDataModule"])
    help_text = " ".join(capsys.readouterr().out.split())  # help is wrapped to the terminal's width
    assert "Training images held out for validation (0 disables validation)" in help_text


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpu_lessons", "fit", "--config", str(CONFIGS / "regression.yaml"), "--print_config"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    assert "gpu_lessons.models.RegressionLesson" in result.stdout


def test_a_checkpoint_matches_its_lesson_however_the_class_path_is_spelled(workdir: Path) -> None:
    run("fit", "step_lr", "--trainer.max_epochs", "1")
    tested = run("test", "step_lr", "--model.class_path", "gpu_lessons.models.schedulers.SchedulerLesson",
                 "--ckpt_path", "checkpoints/step_lr/version_0/last.ckpt")
    assert "test/acc" in tested.trainer.callback_metrics
