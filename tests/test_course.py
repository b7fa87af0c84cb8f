"""The course's plain loop beside each lesson: ``gpu-lessons course LESSON --compare`` trains both and finds the same
weights, to the bit, on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_lessons.course import FULL_BATCH_LESSONS, course_loop, main


@pytest.mark.parametrize("lesson", FULL_BATCH_LESSONS)
def test_the_course_loop_and_the_lightning_lesson_train_bit_identical_weights(
    lesson: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([lesson, "--compare"]) == 0
    out = capsys.readouterr().out
    assert "weights: bit-identical" in out, out
    assert "Epoch    0 | Loss: " in out  # the course's own log line
    assert list(tmp_path.iterdir()) == []  # nothing written: no logs, checkpoints or config files


def test_the_comparison_notices_weights_that_differ(tmp_path: Path, monkeypatch, capsys) -> None:
    """A check that cannot fail proves nothing: one extra step in the course loop must show up."""
    from gpu_lessons import course

    def one_step_more(model, X, y, loss_fn, optimizer, steps, *args, **kwargs):
        return course_loop(model, X, y, loss_fn, optimizer, steps + 1, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(course, "course_loop", one_step_more)
    assert main(["regression", "--compare"]) == 1
    assert "weights differ: largest difference" in capsys.readouterr().out


def test_the_course_loop_is_the_courses_five_lines() -> None:
    """Step 7's loop on its own: y = 2x + 1 learned by a 1-8-1 network, as the course prints it."""
    torch.manual_seed(0)
    X = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Linear(8, 1))
    loss = course_loop(model, X, 2 * X + 1, torch.nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=0.01), 1000)
    assert loss < 1e-3
    assert model(torch.tensor([[10.0]])).item() == pytest.approx(21.0, abs=0.1)


def test_the_mnist_course_loop_and_the_lesson_are_shown_side_by_side(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The course's steps 10/12 loop (ToTensor, batch 32, Adam 1e-3) against the shipped config, on the suite's small
    IDX files: both accuracies printed, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(["mlp", "--data_dir", str(tiny_mnist), "--epochs", "1", "--compare", "--", "--data.init_args.val_size", "100"]) == 0
    out = capsys.readouterr().out
    assert "Epoch 1, Loss: " in out  # the course's own log line
    course = float(out.split("course loop: ")[1].split("test accuracy ")[1].split("%")[0])
    lesson = float(out.split("Lightning lesson, shipped config (5 epochs, batch 512): ")[1].split("test accuracy ")[1].split("%")[0])
    assert 0 <= course <= 100 and lesson > 50  # 10 bright squares: the lesson learns them
    assert list(tmp_path.iterdir()) == []


def test_an_mnist_course_loop_needs_its_data(capsys) -> None:
    assert main(["cnn"]) == 2
    assert "course cnn: give --data_dir" in capsys.readouterr().err
