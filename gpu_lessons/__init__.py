"""gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning lessons (``gpu_lessons.models``) and their data
(``gpu_lessons.data``); ``gpu-lessons fit --config cnn`` runs one."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("gpu_lessons")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["data", "models", "__version__"]


def __getattr__(name: str) -> Any:
    """``gpu_lessons.data`` and ``.models``, imported when first used: ``gpu_lessons.course_loop`` stays light."""
    if name in ("data", "models"):
        return import_module(f"gpu_lessons.{name}")
    raise AttributeError(f"module 'gpu_lessons' has no attribute {name!r}")
