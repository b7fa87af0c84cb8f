"""On a machine with an NVIDIA GPU: each MNIST lesson's fit and test on ``cuda`` with its shipped config, bf16-mixed,
the NaN guard's accelerator interval, an exact resume on one GPU and the doctor's race.

Skipped unless CUDA is usable and ``GPU_LESSONS_GPU_TESTS=1`` (the rest of the suite hides the GPUs to pin down CPU
behaviour): ``python benchmarks/gpu_check.py`` runs these, then the GPU speed table, in one command.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gpu_lessons.callbacks import ACCELERATOR_CHECK_INTERVAL
from gpu_lessons.safe_checkpoints import load_checkpoint

from .conftest import GPU_TESTS
from .helpers import metric, run

pytestmark = pytest.mark.skipif(
    not (GPU_TESTS and torch.cuda.is_available()), reason="needs an NVIDIA GPU and GPU_LESSONS_GPU_TESTS=1"
)
# The real MNIST when the check is given it (benchmarks/gpu_check.py --data_dir), else the suite's small IDX files.
REAL_MNIST = os.environ.get("GPU_LESSONS_MNIST_DIR")


@pytest.fixture
def mnist(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    data_dir = REAL_MNIST or str(tiny_mnist)
    extra = [] if REAL_MNIST else ["--data.init_args.val_size", "100"]
    return ["--data.init_args.data_dir", data_dir, "--data.init_args.download", "false", "--strict_accelerator", "true", *extra]


@pytest.mark.parametrize("lesson", ["mlp", "cnn", "mnist_classifier"])
def test_each_mnist_lesson_fits_and_tests_on_the_gpu_with_its_config(lesson: str, mnist: list[str]) -> None:
    epochs = [] if REAL_MNIST else ["--trainer.max_epochs", "2"]
    cli = run("fit", lesson, *mnist, *epochs)
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert next(cli.model.parameters()).device.type == "cuda"
    assert cli.datamodule.splits["train"][0].device.type == "cuda"  # the data sits on the GPU
    tested = run("test", lesson, *mnist, "--ckpt_path", "last")
    floor = {"mlp": 0.9759, "cnn": 0.9879, "mnist_classifier": 0.975}[lesson] if REAL_MNIST else 0.5
    assert metric(tested, "test/acc") >= floor


def test_bf16_mixed_precision_trains_the_cnn(mnist: list[str]) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cli = run("fit", "cnn", *mnist, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(torch.tensor(metric(cli, "train/loss")))


def test_the_nan_guard_reads_every_32_steps_on_the_gpu_and_names_the_bad_step(mnist: list[str], capsys) -> None:
    """On the GPU the kept losses are read every 32 steps: a NaN at step 41 is found at step 64 and named exactly."""
    assert ACCELERATOR_CHECK_INTERVAL == 32
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "mlp", *mnist, "--trainer.max_epochs", "1",
            "--trainer.callbacks+=tests.helpers.PoisonWeightsAtStep", "--trainer.callbacks.step", "40")
    assert exit_info.value.code == 1
    assert "the training loss became nan at step 41 (epoch 0, batch 40)" in capsys.readouterr().err


def test_a_resume_on_one_gpu_is_bit_identical(mnist: list[str]) -> None:
    exact = ["--trainer.deterministic", "true", "--trainer.max_epochs", "4"]
    whole = run("fit", "cnn", *mnist, *exact, "--run_name", "whole")
    run("fit", "cnn", *mnist, *exact[:2], "--trainer.max_epochs", "2", "--run_name", "part")
    resumed = run("fit", "cnn", *mnist, *exact, "--run_name", "part",
                  "--ckpt_path", "checkpoints/part/version_0/last.ckpt")
    assert resumed.trainer.global_step == whole.trainer.global_step
    first = load_checkpoint(Path(whole.trainer.checkpoint_callback.dirpath, "last.ckpt"))["state_dict"]
    second = load_checkpoint(Path(resumed.trainer.checkpoint_callback.dirpath, "last.ckpt"))["state_dict"]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_doctor_races_the_gpu_and_checks_autograd_there(capsys) -> None:
    from gpu_lessons.doctor import main

    assert main(["--size", "2048", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert torch.cuda.get_device_name(0) in out
    assert "cuda: d/dx (x³ + 5) at x = 4 is 48, calculus says 48: ok" in out
