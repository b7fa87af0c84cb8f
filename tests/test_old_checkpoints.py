"""Checkpoints written by earlier versions keep working: tests/fixtures/regression_98c0fa1.ckpt is a regression run
of 2 epochs saved by the package at commit 98c0fa1 (its RNG states at the top level, the Lesson's NaN guard and the
old batch loader's state), before the lesson, callbacks and data loader took their present shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gpu_lessons.safe_checkpoints import load_checkpoint
from gpu_lessons.models import Lesson, RegressionLesson

from .conftest import REPO
from .helpers import metric, run

OLD = REPO / "tests/fixtures/regression_98c0fa1.ckpt"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_an_old_checkpoint_loads_from_python_with_the_weights_it_was_saved_with() -> None:
    lesson = Lesson.load_from_checkpoint(OLD)
    assert type(lesson) is RegressionLesson
    with torch.no_grad():
        predictions = lesson.eval().predict_step(torch.tensor([[6.0], [7.0], [10.0]]), 0).squeeze(1)
    assert predictions.tolist() == pytest.approx([13.04, 15.06, 21.12], abs=0.005)  # what 98c0fa1 printed


def test_an_old_checkpoint_tests_and_predicts_as_it_did(capsys) -> None:
    cli = run("test", "regression", "--ckpt_path", str(OLD))
    assert metric(cli, "test/mse") == pytest.approx(0.006888271775096655, rel=1e-6)  # 98c0fa1's test/mse
    capsys.readouterr()
    run("predict", "regression", "--ckpt_path", str(OLD))
    assert "x = 6 → ŷ = 13.04" in capsys.readouterr().out


def test_an_old_checkpoint_resumes_exactly_and_where_an_uninterrupted_run_gets(tmp_path: Path) -> None:
    """Resuming it is exact (twice, the same weights to the bit) and lands where one uninterrupted run does: to float
    rounding, since its first 200 steps took the full batch in shuffled orders (a full batch now keeps the stored
    order, as the course's loop does)."""
    shutil.copy(OLD, tmp_path / "old.ckpt")
    run("fit", "regression", "--trainer.max_epochs", "3", "--run_name", "whole", "--pictures.enabled", "false")
    for name in ("resumed", "again"):
        run("fit", "regression", "--trainer.max_epochs", "3", "--run_name", name, "--pictures.enabled", "false",
            "--ckpt_path", str(tmp_path / "old.ckpt"))
    whole, resumed, again = (
        load_checkpoint(tmp_path / f"checkpoints/{name}/version_0/last.ckpt") for name in ("whole", "resumed", "again")
    )
    assert resumed["global_step"] == again["global_step"] == whole["global_step"] == 300
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], again["state_dict"][name]), name
        assert torch.allclose(tensor, resumed["state_dict"][name], atol=1e-5), name
