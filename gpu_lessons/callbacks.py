"""The callbacks the CLI adds by default: :class:`FiniteLossGuard` and :class:`RandomStates` (two of the README's
guarantees) and :class:`CudaRuntimeCheckOnCpu` (speed on the CPU). In your own code, pass them to the ``Trainer``."""

from __future__ import annotations

import math
import os
import random
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from gpu_lessons.errors import CheckpointError, NonFiniteLossError
from gpu_lessons.checkpoint_states import checked_random_states

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"  # set by ``import lightning``: torch's CUDA check asks NVML
ACCELERATOR_CHECK_INTERVAL = 32  # reading the loss back every step would stall an accelerator's pipeline
_ADVICE = "Lower the learning rate or check the data for NaN/inf values."


class FiniteLossGuard(Callback):
    """Stop training at the first NaN or infinite training loss, naming its step, and never save such weights.

    The losses stay on the device and are read together every ``check_every_n_steps`` steps, at each epoch's end and
    before each checkpoint, so a bad step is still named exactly. Under DDP all processes stop together.

    Args:
        check_every_n_steps: How often the kept losses are read. ``None``: every step on the CPU, where reading a
            value costs nothing, and every :data:`ACCELERATOR_CHECK_INTERVAL` steps on an accelerator.
    """

    def __init__(self, check_every_n_steps: Optional[int] = None) -> None:
        if check_every_n_steps is not None and (
            isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1
        ):
            raise ValueError(f"check_every_n_steps must be a positive integer or null, got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self._interval = 1
        self._batch_idx = 0
        self._unread: list[tuple[int, int, Tensor]] = []  # (step, batch, loss) since the last read

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pick the interval for this run's device."""
        on_cpu = trainer.strategy.root_device.type == "cpu"
        self._interval = self.check_every_n_steps or (1 if on_cpu else ACCELERATOR_CHECK_INTERVAL)
        self._unread.clear()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Remember the batch, to name it in the message."""
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        """Keep the loss (a reference, nothing read here); read the kept ones every ``interval`` steps."""
        step = trainer.global_step + 1  # 1-based: the optimizer step this loss is for
        self._unread.append((step, self._batch_idx, loss.detach()))
        if step % self._interval == 0:
            self._raise_if_seen(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """No validation (and no checkpoint after it) of weights a bad step has reached."""
        if not trainer.sanity_checking:
            self._raise_if_seen(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """No epoch ends with a bad step unreported (before its metrics are logged or it is checkpointed)."""
        self._raise_if_seen(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to save after a bad step, or weights that are not finite."""
        self._raise_if_seen(trainer)
        for name, tensor in checkpoint["state_dict"].items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteLossError(
                    f"weight {name} became NaN or infinite by step {trainer.global_step}; no checkpoint was written. "
                    + _ADVICE
                )

    def _raise_if_seen(self, trainer: Trainer) -> None:
        """Read the kept losses (one copy to the host); raise at the first not finite, here or on any process."""
        unread, self._unread = self._unread, []
        values = torch.stack([loss for _, _, loss in unread]).tolist() if unread else []
        bad = next(((step, batch, v) for (step, batch, _), v in zip(unread, values) if not math.isfinite(v)), None)
        seen = bad is not None
        if trainer.world_size > 1:  # the others would wait forever in the next all-reduce
            seen = trainer.strategy.reduce_boolean_decision(seen, all=False)
        if not seen:
            return
        if bad is None:
            where = f"another process, by step {trainer.global_step + 1} (epoch {trainer.current_epoch})"
            value = "NaN or infinite"
        else:
            step, batch, value = bad
            where = f"step {step} (epoch {trainer.current_epoch}, batch {batch})"
        raise NonFiniteLossError(
            f"the training loss became {value} at {where}; training stopped and no checkpoint with non-finite "
            f"weights was written. {_ADVICE}"
        )


class RandomStates(Callback):
    """Keeps torch's, CUDA's and Python's random-number states in every checkpoint and restores them when a fit
    resumes, so the resumed run draws the same dropout masks as an uninterrupted one."""

    def __init__(self) -> None:
        self._restored: Optional[dict[str, Any]] = None  # states to continue from, once training starts

    def state_dict(self) -> dict[str, Any]:
        """The random-number states at the checkpoint, for an exact resume."""
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "python": random.getstate(),
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Forget states restored for an earlier run (Lightning restores callbacks before every stage)."""
        self._restored = None

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Read an older checkpoint's states, kept under ``checkpoint["rng_states"]``."""
        if self.state_key not in checkpoint.get("callbacks", {}) and checkpoint.get("rng_states") is not None:
            self.load_state_dict(checkpoint["rng_states"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the states now (a damaged one fails before anything runs); apply them when training starts."""
        self._restored = checked_random_states(state_dict, "the checkpoint's RandomStates")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Continue the random streams where the checkpoint left them (only a fit: test and predict don't)."""
        if self._restored is None:
            return
        states, self._restored = self._restored, None
        try:
            torch.set_rng_state(states["torch"])
            if states["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(states["cuda"])
            random.setstate(states["python"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"the checkpoint's random-number states are damaged ({type(error).__name__}: {error})") from None


class CudaRuntimeCheckOnCpu(Callback):
    """On a CPU run, ``torch.cuda.is_available()`` asks the CUDA runtime once instead of NVML on every call.

    With the variable ``import lightning`` sets, torch asks NVML anew on each call until CUDA is initialised, which a
    CPU run never does, and Adam asks every step: 0.1-0.2 ms, a small lesson's whole step. The variable is cleared for
    a CPU stage (the processes exist by ``setup``, none uses CUDA) and put back afterwards.
    """

    def __init__(self) -> None:
        self._cleared: Optional[str] = None  # the value to put back

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Clear the variable for a CPU stage."""
        if trainer.strategy.root_device.type == "cpu" and not torch.cuda.is_initialized():
            self._cleared = os.environ.pop(NVML_CHECK_VARIABLE, None)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Put back what was there."""
        if self._cleared is not None:
            os.environ[NVML_CHECK_VARIABLE] = self._cleared
            self._cleared = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Put it back after a failed stage too (Lightning calls no ``teardown`` then)."""
        self.teardown(trainer, pl_module, trainer.state.stage)
