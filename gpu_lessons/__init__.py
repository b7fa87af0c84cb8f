"""gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning code.

Every lesson is a :class:`~lightning.pytorch.LightningModule` around the course's plain ``nn.Module``
(``gpu_lessons.models``), its data a ``LightningDataModule`` (``gpu_lessons.data``), and
``python -m gpu_lessons fit --config configs/<lesson>.yaml`` runs it.
"""

from importlib.metadata import PackageNotFoundError, version

from gpu_lessons import data, models

try:
    __version__ = version("gpu_lessons")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["data", "models", "__version__"]
