"""Whether this machine can train on an NVIDIA GPU, and if not, why."""

from __future__ import annotations

from typing import Optional

import torch


def cuda_unavailable_reason() -> Optional[str]:
    """Why CUDA cannot be used here and how to fix it, or ``None`` when it can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (
            "this torch build has no CUDA support (a CPU-only wheel); install a CUDA build, "
            "e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu124`"
        )
    return (
        f"torch is built with CUDA {torch.version.cuda} but sees no GPU: no NVIDIA driver or device is visible "
        "(check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
    )
