"""Your own pictures of digits as MNIST inputs: 28×28 grayscale uint8, a light digit on black."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import torch
from PIL import ImageOps, ImageStat
from torch import Tensor
from torch.nn.functional import max_pool2d

from gpu_lessons.errors import UserError, print_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The only decoders a user's file reaches, whatever its name: with no formats, PIL hands a PostScript file named
# x.png to Ghostscript (a hang, or code execution through a Ghostscript bug), and any other plugin's bugs are ours.
READ_FORMATS = ("PNG", "JPEG")
_SIZE, _BOX = 28, 20  # MNIST scaled each digit into a 20×20 box and centred it in 28×28
# A photo of a digit needs far fewer pixels; a 13000×13000 RGBA PNG (680 KB on disk) would take 3.4 GB to decode.
MAX_PIXELS = 40_000_000


class BlankPictureError(UserError, ValueError):
    """A picture with no digit in it: a blank page would otherwise be predicted as some digit."""

    def __init__(self) -> None:
        super().__init__("the picture is blank (no digit found)")


def mnist_digit(image: PIL.Image.Image) -> Tensor:
    """One picture as a ``[28, 28]`` uint8 MNIST digit: a light digit on black, a 28×28 picture as it is, any other
    cropped to the digit and scaled into MNIST's centred 20×20 box (strokes kept a pixel wide), or a
    :class:`BlankPictureError`."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, "white"), image)
    gray = image.convert("L")
    if ImageStat.Stat(gray).mean[0] > 127:
        gray = ImageOps.invert(gray)
    if gray.size != (_SIZE, _SIZE):
        low, high = gray.getextrema()
        if low == high:
            raise BlankPictureError()
        threshold = high // 2
        if (box := gray.point(lambda v: 255 if v > threshold else 0).getbbox()) is not None:
            gray = gray.crop(box)
        scale = _BOX / max(gray.size)
        stroke = np.array(gray) > threshold
        outline = sum(np.count_nonzero(np.diff(stroke, axis=axis, prepend=False, append=False)) for axis in (0, 1))
        if 2 * np.count_nonzero(stroke) / max(outline, 1) * scale < 1:  # mean stroke width: twice area over outline
            # Scaling would average a stroke thinner than a pixel away (a pen line on a page, a minus sign): the
            # brightest pixel of each block keeps it.
            pixels = torch.from_numpy(np.array(gray, dtype=np.uint8))[None]
            gray = PIL.Image.fromarray(max_pool2d(pixels, math.ceil(1 / scale), ceil_mode=True)[0].numpy())
        digit = ImageOps.pad(gray, (_BOX, _BOX), method=PIL.Image.Resampling.LANCZOS, color=0)
        gray = ImageOps.expand(digit, border=(_SIZE - _BOX) // 2, fill=0)
        if gray.getextrema()[1] == 0:
            raise BlankPictureError()
    return torch.from_numpy(np.array(gray, dtype=np.uint8))


def read_digits(source: Union[str, Path]) -> tuple[Tensor, list[str]]:
    """The picture ``source``, or every PNG/JPEG file in the folder ``source``, as ``[N, 28, 28]`` uint8 digits and
    their printable paths (:func:`decode_digits`); a :class:`~gpu_lessons.errors.UserError` if none can be read."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            classes = sorted(p.name for p in source.iterdir() if p.is_dir())
            hint = (
                f": its pictures are in class folders ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}); give one "
                f"of them, or test on all with --data gpu_lessons.data.ImageFolderDataModule --data.root {source}"
                if classes else ""
            )
            raise UserError(f"predict_images: {source} has no PNG or JPEG files{hint}")
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
    """Each picture in ``paths`` as a ``[28, 28]`` uint8 digit (:func:`mnist_digit`), and the paths that were read;
    one that cannot be read gets an ``error:`` line and is skipped (the only one: a ``UserError``)."""
    digits, read, failures = [], [], []
    for path in paths:
        try:
            with PIL.Image.open(path, formats=READ_FORMATS) as image:
                # The header gives the size before any pixel is decoded: a small file can hold a huge image.
                if image.width * image.height > MAX_PIXELS:
                    raise ValueError(
                        f"{image.width}×{image.height} pixels is more than the {MAX_PIXELS:,} read here; scale it down "
                        "first"
                    )
                image.load()  # decode now, so that a corrupt file fails here
        except PIL.UnidentifiedImageError:
            kind = _other_format(path)
            reason = f"it is {kind}, not PNG or JPEG" if kind else "not a PNG or JPEG file, or a corrupt one"
            failures.append(f"{printable(path)}: cannot read image ({reason})")
            continue
        except Exception as error:  # corrupt files make PIL raise OSError, SyntaxError, ValueError, ...
            failures.append(f"{printable(path)}: cannot read image ({error})")
            continue
        try:
            digits.append(mnist_digit(image))
            read.append(path)
        except BlankPictureError as error:
            failures.append(f"{printable(path)}: {error}")
    if not digits and len(failures) == 1:
        raise UserError(failures[0])
    for failure in failures:
        print_error(failure)
    return digits, read


def printable(path: Path) -> str:
    """The path as text that encodes to UTF-8: a file name's undecodable bytes (lone surrogates) become U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Magic bytes of the formats a user is likely to hand over instead, to name them in the error (never decoded).
_OTHER_FORMATS = (
    ((0, b"%!PS"), "PostScript"),
    ((0, b"\xc5\xd0\xd3\xc6"), "PostScript"),  # EPS with a binary DOS header
    ((0, b"%PDF"), "PDF"),
    ((0, b"GIF8"), "GIF"),
    ((0, b"II*\x00"), "TIFF"),
    ((0, b"MM\x00*"), "TIFF"),
    ((8, b"WEBP"), "WebP"),
    ((8, b"heic"), "HEIC"),
    ((8, b"heix"), "HEIC"),
    ((8, b"mif1"), "HEIF"),
    ((8, b"avif"), "AVIF"),
    ((0, b"8BPS"), "PSD (Photoshop)"),
)


def _other_format(path: Path) -> str:
    """The format of a file PIL was not allowed to open, from its first bytes; "" when unknown."""
    try:
        with open(path, "rb") as file:
            head = file.read(32)
    except OSError:
        return ""
    for (offset, magic), name in _OTHER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            return name
    # "BM" alone starts too many other files: a BMP header also gives one of the known DIB header sizes
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    return ""
