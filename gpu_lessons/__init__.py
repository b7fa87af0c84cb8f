"""gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning code.

Every lesson is a :class:`~lightning.pytorch.LightningModule` around the course's plain ``nn.Module``
(``gpu_lessons.models``), its data a ``LightningDataModule`` (``gpu_lessons.data``), and
``python -m gpu_lessons fit --config configs/<lesson>.yaml`` runs it.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("gpu_lessons")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["data", "models", "__version__"]


def __getattr__(name: str) -> Any:
    """``gpu_lessons.data`` and ``gpu_lessons.models``, imported when first used: ``import gpu_lessons.course_loop``
    (torch alone) stays as light as the course's own scripts."""
    if name in ("data", "models"):
        return import_module(f"gpu_lessons.{name}")
    raise AttributeError(f"module 'gpu_lessons' has no attribute {name!r}")
