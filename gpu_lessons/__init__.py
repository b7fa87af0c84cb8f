"""gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning code.

Every lesson is a :class:`~lightning.pytorch.LightningModule` around the course's plain ``nn.Module``
(``gpu_lessons.models``), its data a ``LightningDataModule`` (``gpu_lessons.data``), and
``python -m gpu_lessons fit --config configs/<lesson>.yaml`` runs it.
"""

from gpu_lessons import data, models

__version__ = "0.1.0"
__all__ = ["data", "models", "__version__"]
