"""Shared fixtures: small MNIST-format datasets written as real IDX files, read back by torchvision's loader."""

from __future__ import annotations

import os
import struct
from pathlib import Path

# The tests pin down CPU behaviour (bit-exact resume, configs saying ``accelerator: gpu`` falling back): run them
# on the CPU even on a machine with a GPU. tests/test_gpu.py checks the GPU itself: `GPU_LESSONS_GPU_TESTS=1 python -m
# pytest tests/test_gpu.py` (benchmarks/gpu_check.py runs it) leaves the GPUs visible.
GPU_TESTS = os.environ.get("GPU_LESSONS_GPU_TESTS") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def write_idx_dataset(root: Path, num_train: int, num_test: int, seed: int = 0, folder: str = "MNIST") -> Path:
    """Write the four IDX files torchvision expects into ``root/folder/raw``.

    Each digit ``k`` is a bright 6×6 square at a position that depends on ``k``, over faint noise, so a network can
    learn the labels in a few steps.
    """
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = 3 + 6 * (label // 4), 3 + 6 * (label % 4)
            images[i, row : row + 6, col : col + 6] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with a 600-image training set and a 200-image test set in MNIST's on-disk format."""
    return write_idx_dataset(tmp_path_factory.mktemp("mnist"), num_train=600, num_test=200)


@pytest.fixture(autouse=True)
def _fixed_threads() -> None:
    # Deterministic CPU arithmetic and no oversubscription on small CI machines.
    torch.set_num_threads(1)
