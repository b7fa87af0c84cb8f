"""Your pictures are read safely: only as PNG or JPEG, whatever their names, and never turned into a blank digit."""

from __future__ import annotations

from pathlib import Path

import PIL.EpsImagePlugin
import PIL.Image
import pytest
import torch
from PIL import ImageDraw

from gpu_lessons.data import ImageFolderDataModule
from gpu_lessons.data.images import mnist_digit, read_digits
from gpu_lessons.errors import UserError

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 14 4 moveto 14 24 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def ghostscript_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What PIL's EPS plugin was asked to do: parse a file (``_open``) or run Ghostscript; the test asserts none."""
    calls: list[str] = []

    def parse(self: PIL.EpsImagePlugin.EpsImageFile) -> None:
        calls.append("EpsImageFile._open")
        raise SyntaxError("the EPS plugin must never see a user's file")

    def ghostscript(*args: object, **kwargs: object) -> None:
        calls.append("Ghostscript")
        raise OSError("Ghostscript must never run on a user's file")

    monkeypatch.setattr(PIL.EpsImagePlugin.EpsImageFile, "_open", parse)
    monkeypatch.setattr(PIL.EpsImagePlugin, "Ghostscript", ghostscript)
    return calls


def _pen_line(size: tuple[int, int], box: tuple[int, int, int, int]) -> PIL.Image.Image:
    """White paper of ``size`` with a black rectangle ``box`` (left, top, right, bottom) on it."""
    paper = PIL.Image.new("L", size, 255)
    paper.paste(0, box)
    return paper


def test_a_postscript_file_named_png_is_refused_without_reaching_ghostscript(
    tmp_path: Path, ghostscript_calls: list[str]
) -> None:
    picture = tmp_path / "digit.png"
    picture.write_bytes(EPS)
    with pytest.raises(UserError) as refused:
        read_digits(picture)
    assert ghostscript_calls == []
    assert str(refused.value) == f"{picture}: cannot read image (it is PostScript, not PNG or JPEG)"


@pytest.mark.parametrize("format_", ["GIF", "BMP", "TIFF"])
def test_another_format_named_png_is_refused_and_named(format_: str, tmp_path: Path) -> None:
    picture = tmp_path / "digit.png"
    PIL.Image.new("L", (28, 28), 200).save(picture, format=format_)
    with pytest.raises(UserError) as refused:
        read_digits(picture)
    assert str(refused.value) == f"{picture}: cannot read image (it is {format_}, not PNG or JPEG)"


def test_pngs_and_jpegs_are_read_by_their_content_not_their_names(tmp_path: Path, capsys) -> None:
    stroke = _pen_line((60, 80), (25, 10, 35, 70))
    stroke.save(tmp_path / "a.png")
    stroke.save(tmp_path / "b.jpg")
    stroke.save(tmp_path / "c_a_jpeg.png", format="JPEG")
    stroke.save(tmp_path / "d_a_gif.png", format="GIF")
    digits, names = read_digits(tmp_path)
    assert [Path(name).name for name in names] == ["a.png", "b.jpg", "c_a_jpeg.png"]
    assert digits.shape == (3, 28, 28) and all(digit.max() >= 128 for digit in digits)
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'd_a_gif.png'}: cannot read image (it is GIF, not PNG or JPEG)\n"
    )


def test_the_image_folder_datamodule_refuses_other_formats_too(
    tmp_path: Path, ghostscript_calls: list[str], capsys
) -> None:
    for label, box in (("1", (28, 8, 36, 56)), ("7", (8, 28, 56, 36))):
        (tmp_path / label).mkdir()
        for i in range(2):
            _pen_line((64, 64), box).save(tmp_path / label / f"{i}.png")
    (tmp_path / "7" / "eps.png").write_bytes(EPS)
    datamodule = ImageFolderDataModule(tmp_path, val_fraction=0, test_fraction=0)
    datamodule.setup("fit")
    assert sorted(datamodule.splits["train"][1].tolist()) == [1, 1, 7, 7]
    assert capsys.readouterr().err == (
        f"error: {tmp_path / '7' / 'eps.png'}: cannot read image (it is PostScript, not PNG or JPEG)\n"
    )
    assert ghostscript_calls == []


def test_a_thin_stroke_keeps_at_least_a_pixel_of_stroke() -> None:
    for case, picture, upright in [
        ("a 12 px pen line on a 600×800 page", _pen_line((600, 800), (294, 50, 306, 750)), True),
        ("a 400×12 minus sign on a 600×800 page", _pen_line((600, 800), (100, 394, 500, 406)), False),
        ("a 1000×1 picture of a dark stroke", _pen_line((1000, 1), (300, 0, 700, 1)), False),
        ("a 3 px pen line across a 3000×3000 page", _pen_line((3000, 3000), (1000, 1500, 2000, 1503)), False),
    ]:
        digit = mnist_digit(picture)
        assert digit.max() >= 128, f"{case} became a blank digit"
        rows, cols = (digit >= 128).nonzero(as_tuple=True)
        tall, wide = rows.max() - rows.min(), cols.max() - cols.min()
        # the stroke's own shape, scaled into the 20×20 box
        assert (tall > wide) == upright and max(tall, wide) == 19, case


def test_a_thin_diagonal_pen_digit_on_a_photo_keeps_its_stroke() -> None:
    photo = PIL.Image.new("L", (4000, 3000), 235)
    ImageDraw.Draw(photo).line([(1500, 600), (2500, 600), (1700, 2400)], fill=30, width=5)  # a 7
    digit = mnist_digit(photo)
    assert (digit >= 128).sum() >= 20  # both strokes of the 7, not a faint smudge


def test_a_blank_picture_is_refused_and_the_others_are_read(tmp_path: Path, capsys) -> None:
    blank = tmp_path / "blank.png"
    PIL.Image.new("L", (100, 100), 255).save(blank)
    with pytest.raises(UserError) as refused:
        read_digits(blank)
    assert str(refused.value) == f"{blank}: the picture is blank (no digit found)"

    _pen_line((100, 100), (45, 10, 55, 90)).save(tmp_path / "one.png")
    digits, names = read_digits(tmp_path)
    assert [Path(name).name for name in names] == ["one.png"] and digits.max() >= 128
    assert capsys.readouterr().err == f"error: {blank}: the picture is blank (no digit found)\n"

    # A 28×28 picture is already an MNIST digit and is taken as it is, even an empty one.
    assert torch.equal(mnist_digit(PIL.Image.new("L", (28, 28))), torch.zeros(28, 28, dtype=torch.uint8))


def test_a_folder_of_class_folders_given_to_predict_images_says_what_to_do(tmp_path: Path) -> None:
    """A learner's my_digits/ (0/, 1/, 7/ inside) given as predict_images: name the class folders and the way to use
    them, instead of only "no PNG or JPEG files"."""
    from gpu_lessons.data.images import read_digits
    from gpu_lessons.errors import UserError

    for name in ("0", "1", "7"):
        (tmp_path / "my_digits" / name).mkdir(parents=True)
    with pytest.raises(UserError, match=r"has no PNG or JPEG files: its pictures are in class folders \(0, 1, 7\); give one "
                       r"of them, or test on all with --data gpu_lessons.data.ImageFolderDataModule --data.root "):
        read_digits(tmp_path / "my_digits")
