"""Whether this machine can train on an NVIDIA GPU, and if not, why."""

from __future__ import annotations

import sys
from typing import Any, Optional

import torch

from gpu_lessons.errors import UserError, preview


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


def resolve_accelerator(trainer: Any, strict: bool) -> None:
    """``accelerator: gpu``/``cuda`` where CUDA is not usable: the CPU, in one process, with one line saying why (with
    ``strict``, a :class:`UserError`). ``trainer`` is the config's trainer settings, changed here."""
    accelerator = trainer.accelerator
    if not isinstance(accelerator, str) or accelerator.lower() not in ("gpu", "cuda"):
        return
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    devices = trainer.devices
    if not _is_device_count(devices):
        raise UserError(f"trainer.devices {preview(devices)} is not a device count (>= 1, -1 for all, or auto) or a list of ids")
    if strict:
        raise UserError(f"accelerator '{accelerator}' was requested with strict_accelerator, but {reason}")
    sys.stderr.write(f"gpu_lessons: accelerator '{accelerator}' -> 'cpu': {reason}. Pass --strict_accelerator true to make this an error.\n")
    trainer.accelerator, trainer.devices = "cpu", 1  # ``devices: 2`` meant two GPUs, not two CPU processes


def _is_device_count(devices: Any) -> bool:
    if isinstance(devices, (list, tuple)):
        return len(devices) > 0
    text = str(devices).strip()
    return text == "auto" or text == "-1" or (text.isdigit() and int(text) >= 1)
