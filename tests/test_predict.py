"""``python -m gpu_lessons predict``: readable predictions from a checkpoint, CSV output, your own digit pictures."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import PIL.Image
import pytest
import torch
from torchvision import datasets

from gpu_lessons.data.images import mnist_digit

from .helpers import run

REGRESSION_LINE = re.compile(r"^x = (\S+) → ŷ = (\S+)$", re.MULTILINE)
CLASS_LINE = re.compile(r"^(.+) → (?:class|digit) (\d+) \(probability ([\d.]+)%\)$", re.MULTILINE)


def _fit(folder: Path, config: str, *extra: str) -> Path:
    """Fit ``config`` with its checkpoints in ``folder`` (module fixtures cannot use ``monkeypatch.chdir``)."""
    torch.set_num_threads(1)
    previous = os.getcwd()
    os.chdir(folder)
    try:
        run("fit", config, *extra)
    finally:
        os.chdir(previous)
    return folder


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with checkpoints/regression/version_0/last.ckpt from the shipped config."""
    return _fit(tmp_path_factory.mktemp("regression"), "regression")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> Path:
    """A folder with checkpoints/cnn/version_0/last.ckpt, one epoch on the tiny MNIST."""
    return _fit(tmp_path_factory.mktemp("cnn"), "cnn", *_tiny(tiny_mnist), "--trainer.max_epochs", "1")


def _tiny(data_dir: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(data_dir), "--data.init_args.val_size", "100",
            "--data.init_args.download", "false", "--data.init_args.batch_size", "64"]


def _predict(config: str, *extra: str) -> None:
    run("predict", config, "--ckpt_path", f"checkpoints/{config}/version_0/last.ckpt", *extra)


def test_regression_prints_the_course_predictions_and_writes_them_as_csv(
    regression: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(regression)
    _predict("regression", "--output", "out/line.csv")
    out = capsys.readouterr().out
    printed = REGRESSION_LINE.findall(out)
    assert [x for x, _ in printed] == ["6", "7", "10"]
    assert [float(y) for _, y in printed] == pytest.approx([13.0, 15.0, 21.0], abs=0.05)
    assert "3 predictions written to out/line.csv" in out
    with open("out/line.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["x"] for row in rows] == ["6.0", "7.0", "10.0"]
    assert [float(row["prediction"]) for row in rows] == pytest.approx([13.0, 15.0, 21.0], abs=0.05)


def test_predict_x_comes_from_the_command_line(
    regression: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(regression)
    _predict("regression", "--data.init_args.predict_x", "[0.5, 100]")
    assert [x for x, _ in REGRESSION_LINE.findall(capsys.readouterr().out)] == ["0.5", "100"]


def test_output_never_overwrites_a_file(
    regression: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(regression)
    existing = tmp_path / "predictions.csv"
    existing.write_bytes(b"my own notes\n")
    with pytest.raises(SystemExit) as exit_info:
        _predict("regression", "--output", str(existing))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {existing} already exists and was left as it is; delete or rename it, or choose another name" in captured.err
    assert "Traceback" not in captured.err and "ŷ" not in captured.out
    assert existing.read_bytes() == b"my own notes\n"

    with pytest.raises(SystemExit):
        run("fit", "regression", "--output", str(tmp_path / "new.csv"))
    assert "error: --output is for predict" in capsys.readouterr().err


def test_classifier_predicts_the_course_points_with_the_probability_of_the_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    run("fit", "classifier")
    capsys.readouterr()
    _predict("classifier")
    printed = CLASS_LINE.findall(capsys.readouterr().out)
    assert [point for point, _, _ in printed] == ["point [2.0, 2.0]", "point [6.0, 6.0]", "point [1.5, 1.8]",
                                                 "point [5.5, 6.2]"]
    assert [label for _, label, _ in printed] == ["0", "1", "0", "1"]
    assert all(float(confidence) > 99 for _, _, confidence in printed)  # of the predicted class, not of class 1


def test_random_features_print_the_first_test_samples_and_write_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    run("fit", "step_lr")
    capsys.readouterr()
    _predict("step_lr", "--output", "all.csv")
    out = capsys.readouterr().out
    assert len(CLASS_LINE.findall(out)) == 20 and "... and 80 more" in out
    with open("all.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 100  # the test split
    assert list(rows[0]) == ["x1", "x2", "x3", "x4", "class", "probability"]


def test_mnist_predicts_picture_files_of_any_size_and_reports_bad_ones(
    cnn: Path, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(cnn)
    _predict("cnn", *_tiny(tiny_mnist))  # the test set, as before
    from_test_set = {name: rest for name, *rest in CLASS_LINE.findall(capsys.readouterr().out)}

    test_image = datasets.MNIST(tiny_mnist, train=False).data[0].numpy()
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    PIL.Image.fromarray(test_image).save(pictures / "a_light_on_dark.png")
    PIL.Image.fromarray(255 - test_image).save(pictures / "b_dark_on_light.png")
    PIL.Image.fromarray(test_image).convert("RGB").resize((90, 60)).save(pictures / "c_large.jpg")
    (pictures / "d_corrupt.png").write_bytes(b"not an image")
    (pictures / "notes.txt").write_text("not a picture, ignored")

    # The pictures need no MNIST files: an empty data_dir will do.
    _predict("cnn", *_tiny(tmp_path / "no_mnist_here"), "--data.init_args.predict_images", str(pictures))
    captured = capsys.readouterr()
    printed = {Path(name).name: rest for name, *rest in CLASS_LINE.findall(captured.out)}
    assert sorted(printed) == ["a_light_on_dark.png", "b_dark_on_light.png", "c_large.jpg"]
    # A 28×28 picture is used as it is, so it gets exactly the test set's prediction; its inverted twin is inverted
    # back to the same pixels.
    assert printed["a_light_on_dark.png"] == printed["b_dark_on_light.png"] == from_test_set["sample 0"]
    assert captured.err.count("error:") == 1
    assert f"error: {pictures / 'd_corrupt.png'}: cannot read image (" in captured.err


def test_no_usable_picture_is_one_clear_error(
    cnn: Path, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(cnn)
    corrupt = tmp_path / "digit.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for source, message in [
        (corrupt, f"error: {corrupt}: cannot read image ("),
        (tmp_path / "missing", f"error: predict_images: {tmp_path / 'missing'} does not exist"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            _predict("cnn", *_tiny(tiny_mnist), "--data.init_args.predict_images", str(source))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and message in err and "Traceback" not in err


def test_a_picture_becomes_an_mnist_digit() -> None:
    # A dark stroke on white paper, 200×100 with transparency around it: inverted, cropped, fitted into 20×20.
    paper = PIL.Image.new("RGBA", (100, 200), (0, 0, 0, 0))
    paper.paste((0, 0, 0, 255), (40, 20, 60, 180))  # 20 wide, 160 tall
    digit = mnist_digit(paper)
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    rows, cols = (digit > 127).nonzero(as_tuple=True)
    assert (rows.min(), rows.max()) == (4, 23)  # 160 tall -> the box's 20
    assert cols.min() >= 12 and cols.max() <= 15  # 20 wide -> 2.5, centred
    assert digit[0].sum() == 0  # the paper is black

    exact = torch.randint(0, 40, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mnist_digit(PIL.Image.fromarray(exact.numpy())), exact)


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path: Path) -> None:
    """``PIL.Image.open`` on a FIFO waits forever for a writer: only regular files are read (in a subprocess, so a
    regression shows as a timeout, not a hung suite)."""
    import subprocess
    import sys

    from .conftest import REPO

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    script = (
        "import sys\nfrom gpu_lessons.data.images import read_digits\nfrom gpu_lessons.errors import UserError\n"
        f"try:\n    read_digits({str(fifo)!r})\nexcept UserError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == f"predict_images: {fifo} is not a regular file or a folder"


def test_a_picture_of_too_many_pixels_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    from gpu_lessons.data.images import MAX_PIXELS, read_digits
    from gpu_lessons.errors import UserError

    PIL.Image.new("1", (7000, 7000)).save(tmp_path / "huge.png")  # 49 M pixels in a file of a few kB
    assert 7000 * 7000 > MAX_PIXELS and (tmp_path / "huge.png").stat().st_size < 100_000
    with pytest.raises(UserError, match=r"huge.png: cannot read image \(7000×7000 pixels is more than the 40,000,000"):
        read_digits(tmp_path / "huge.png")


def test_a_file_name_that_is_not_utf8_is_predicted_and_written_to_the_csv(
    cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(cnn)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, name in enumerate([b"seven\xff.png", b"plain.png"]):
        PIL.Image.new("L", (28, 28), color=40 * i).save(os.path.join(os.fsencode(pictures), name))
    output = tmp_path / "digits.csv"
    _predict("cnn", "--data.init_args.predict_images", str(pictures), "--output", str(output))
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert [row["input"] for row in rows] == [str(pictures / "plain.png"), str(pictures / "seven\ufffd.png")]
    assert "seven\ufffd.png → digit" in capsys.readouterr().out


def test_a_csv_that_cannot_be_written_leaves_no_partial_file(
    regression: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    monkeypatch.chdir(regression)
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        _predict("regression", "--output", str(tmp_path / "line.csv"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert exit_info.value.code == 1  # the machine's failure, not bad input (gpu_lessons.errors)
    assert f"error: cannot write or read {tmp_path / 'line.csv'}: No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the CSV nor its temporary file
    _predict("regression", "--output", str(tmp_path / "line.csv"))  # and the next run is not blocked
    assert len((tmp_path / "line.csv").read_text().splitlines()) == 4
