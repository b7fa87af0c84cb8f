"""Callbacks behind two of the README's guarantees, each on Lightning's public hooks only.

* :class:`FiniteLossGuard`: a NaN or infinite loss stops training at its step, before it reaches the weights or a
  checkpoint.
* :class:`RandomStates`: a checkpoint carries the random-number states, so a resumed run draws the same dropout
  masks as an uninterrupted one.

The CLI adds both as defaults (``--print_config`` shows them); in your own code, pass them to the ``Trainer``.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from gpu_lessons.errors import CheckpointError, NonFiniteLossError

# On an accelerator, reading the loss back every step would stall the pipeline once per step.
ACCELERATOR_CHECK_INTERVAL = 32

_ADVICE = "Lower the learning rate or check the data for NaN/inf values."


class FiniteLossGuard(Callback):
    """Stop training at the first NaN or infinite training loss, naming its step, and never save such weights.

    Each loss is checked on the device before its backward pass (``on_before_backward``): the first bad step is
    recorded there without reading anything back, and the record is read every ``check_every_n_steps`` steps, at
    every epoch's end and before every checkpoint. So with an interval above 1 a bad step is still named exactly and
    never saved; training just runs a few more steps on NaNs before it stops. Under DDP all processes stop together
    (the others would otherwise wait forever in the next gradient all-reduce).

    Args:
        check_every_n_steps: How often the record is read. ``None``: every step on the CPU, where reading a value
            costs nothing, and every :data:`ACCELERATOR_CHECK_INTERVAL` steps on an accelerator.
    """

    def __init__(self, check_every_n_steps: Optional[int] = None) -> None:
        if check_every_n_steps is not None and (
            isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1
        ):
            raise ValueError(f"check_every_n_steps must be a positive integer or null, got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: Optional[Tensor] = None  # 0 until a non-finite loss is seen, then that step (1-based)
        self._interval = 1
        self._batch_idx = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pick the interval for this run's device and start with a clean record on it."""
        on_cpu = trainer.strategy.root_device.type == "cpu"
        self._interval = self.check_every_n_steps or (1 if on_cpu else ACCELERATOR_CHECK_INTERVAL)
        self._first_bad_step = torch.zeros((), dtype=torch.long, device=trainer.strategy.root_device)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Remember the batch, to name it in the message."""
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        """Record the step if its loss is not finite, on the device; read the record every ``interval`` steps."""
        step = trainer.global_step + 1  # 1-based: the optimizer step this loss is for
        first = self._first_bad_step
        first.copy_(torch.where(~torch.isfinite(loss.detach()) & (first == 0), step, first))
        if step % self._interval == 0:
            self._raise_if_seen(trainer, current=(step, loss))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """No validation (and no checkpoint after it) of weights a bad step has reached."""
        if not trainer.sanity_checking and self._first_bad_step is not None:
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

    def _raise_if_seen(self, trainer: Trainer, current: Optional[tuple[int, Tensor]] = None) -> None:
        """Raise if a bad step was recorded here or on any process; ``current`` is the step just checked and its
        loss, to show the value when that is the bad step."""
        step = 0 if self._first_bad_step is None else int(self._first_bad_step)
        seen = step > 0
        if trainer.world_size > 1:  # any process: all must stop together
            seen = trainer.strategy.reduce_boolean_decision(seen, all=False)
        if not seen:
            return
        if step == 0:  # by this step, at the latest
            value, step, at_its_step = "NaN or infinite on another process", trainer.global_step + 1, False
        else:
            at_its_step = current is not None and step == current[0]  # the value and the batch are known
            value = f"{current[1].item()}" if at_its_step else "NaN or infinite"
        where = f"step {step} (epoch {trainer.current_epoch}" + (f", batch {self._batch_idx})" if at_its_step else ")")
        raise NonFiniteLossError(
            f"the training loss became {value} at {where}; training stopped and no checkpoint with non-finite "
            f"weights was written. {_ADVICE}"
        )


class RandomStates(Callback):
    """Keeps the random-number states in every checkpoint and restores them when a fit resumes from one, so the
    resumed run draws the same dropout masks (and any other random numbers) as an uninterrupted run would.

    Saved: torch's CPU generator, this process's CUDA generator (under DDP only rank zero's is written) and Python's
    ``random``. Restored only by ``fit``: testing or predicting from a checkpoint leaves the global generators alone.
    Checkpoints written before this callback existed kept the same states under ``checkpoint["rng_states"]``; those
    are restored too.
    """

    def __init__(self) -> None:
        self._restored: Optional[dict[str, Any]] = None  # states to continue from, once training starts

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "python": random.getstate(),
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Forget states restored for an earlier run (Lightning restores callbacks before every stage)."""
        self._restored = None

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """A checkpoint from before this callback has no state under its key, but the same states under
        ``checkpoint["rng_states"]``."""
        if self.state_key not in checkpoint.get("callbacks", {}) and checkpoint.get("rng_states") is not None:
            self.load_state_dict(checkpoint["rng_states"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Continue the random streams where the checkpoint left them, just before the first training batch (only a
        fit trains: testing or predicting from a checkpoint leaves the global generators alone)."""
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
