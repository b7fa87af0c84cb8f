"""Your own pictures of digits as MNIST inputs: 28×28 grayscale uint8, a light digit on black."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import torch
from PIL import ImageOps, ImageStat
from torch import Tensor

from gpu_lessons.errors import UserError, print_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SIZE, _BOX = 28, 20  # MNIST scaled each digit into a 20×20 box and centred it in 28×28
# A photo of a digit needs far fewer pixels; a 13000×13000 RGBA PNG (680 KB on disk) would take 3.4 GB to decode.
MAX_PIXELS = 40_000_000


def mnist_digit(image: PIL.Image.Image) -> Tensor:
    """One picture as a ``[28, 28]`` uint8 MNIST digit.

    Transparency becomes white paper, and a dark digit on a light background is inverted. A 28×28 picture is then
    taken as it is; any other is cropped to the digit, which is scaled into a 20×20 box centred in 28×28.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, "white"), image)
    gray = image.convert("L")
    if ImageStat.Stat(gray).mean[0] > 127:
        gray = ImageOps.invert(gray)
    if gray.size != (_SIZE, _SIZE):
        threshold = gray.getextrema()[1] // 2
        if (box := gray.point(lambda v: 255 if v > threshold else 0).getbbox()) is not None:
            gray = gray.crop(box)
        digit = ImageOps.pad(gray, (_BOX, _BOX), method=PIL.Image.Resampling.LANCZOS, color=0)
        gray = PIL.Image.new("L", (_SIZE, _SIZE))
        gray.paste(digit, ((_SIZE - _BOX) // 2,) * 2)
    return torch.from_numpy(np.array(gray, dtype=np.uint8))


def read_digits(source: Union[str, Path]) -> tuple[Tensor, list[str]]:
    """The picture ``source``, or every PNG/JPEG file in the folder ``source``, as ``[N, 28, 28]`` uint8 digits and
    their paths.

    A file that cannot be decoded gets its own ``error:`` line and is skipped; if none can be, that is a
    :class:`~gpu_lessons.errors.UserError`.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise UserError(f"predict_images: {source} has no PNG or JPEG files")
    elif source.is_file():
        paths = [source]
    elif source.exists():  # a FIFO or device would block or never end: only regular files are read
        raise UserError(f"predict_images: {source} is not a regular file or a folder")
    else:
        raise UserError(f"predict_images: {source} does not exist")

    digits, read = decode_digits(paths)
    if not digits:
        raise UserError(f"predict_images: none of the {len(paths)} files in {source} could be read")
    return torch.stack(digits), [printable(path) for path in read]


def decode_digits(paths: list[Path]) -> tuple[list[Tensor], list[Path]]:
    """Each picture in ``paths`` as a ``[28, 28]`` uint8 digit (:func:`mnist_digit`), and the paths that were read.
    A file that cannot be decoded gets its own ``error:`` line and is skipped (the only one, a
    :class:`~gpu_lessons.errors.UserError`)."""
    digits, read, failures = [], [], []
    for path in paths:
        try:
            image = _decode(path)
        except PIL.UnidentifiedImageError:
            failures.append(f"{printable(path)}: cannot read image (not a PNG or JPEG file, or a corrupt one)")
            continue
        except Exception as error:  # corrupt files make PIL raise OSError, SyntaxError, ValueError, ...
            failures.append(f"{printable(path)}: cannot read image ({error})")
            continue
        digits.append(mnist_digit(image))
        read.append(path)
    if not digits and len(failures) == 1:
        raise UserError(failures[0])
    for failure in failures:
        print_error(failure)
    return digits, read


def printable(path: Path) -> str:
    """The path as text that prints and writes to UTF-8 anywhere: bytes of a file name that are not UTF-8 (Python
    keeps them as lone surrogates, which fail to encode) become U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _decode(path: Path) -> PIL.Image.Image:
    with PIL.Image.open(path) as image:
        # The header gives the size before any pixel is decoded: a small file can hold a huge image.
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(
                f"{image.width}×{image.height} pixels is more than the {MAX_PIXELS:,} read here; scale it down first"
            )
        image.load()  # decode now, so that a corrupt file fails here
    return image
