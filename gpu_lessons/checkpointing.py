"""The checkpoint callbacks and plugin the CLI adds: checkpoints that only touch their own folder, a save on SIGTERM,
and atomic, weights-only checkpoint IO."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpu_lessons.atomic_files import PathLike, write_atomically
from gpu_lessons.checkpoint_states import checked_model_checkpoint_state
from gpu_lessons.errors import CheckpointError
from gpu_lessons.progress import shown
from gpu_lessons.safe_checkpoints import load_checkpoint


class ConfinedCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, restoring from a checkpoint only files of its own folder: Lightning later
    deletes the recorded files that rotate out, and its "inside dirpath" test is textual (``..`` passes)."""

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key (a subclass keeps its own): its checkpoints resume into this without a warning."""
        key = super().state_key
        return key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1) if type(self) is ConfinedCheckpoint else key

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the checked state, keeping a recorded path only if, resolved, it is a ``.ckpt`` file directly in
        this folder and not a link; a checkpoint of another folder (a resume's) restores nothing."""
        state = checked_model_checkpoint_state(state_dict, f"the checkpoint's {type(self).__name__}")
        folder = _resolved(self.dirpath)
        if folder is None or _resolved(state.get("dirpath")) != folder:
            return

        def own(path: str) -> str:
            if Path(path).suffix != ".ckpt" or _is_link(path):
                return ""
            resolved = _resolved(path)
            if resolved is None or resolved.parent != folder or (resolved.exists() and not resolved.is_file()):
                return ""
            return os.path.join(self.dirpath, resolved.name)

        self.best_k_models = {mine: score for path, score in state.get("best_k_models", {}).items() if (mine := own(path))}
        self.last_model_path = own(state.get("last_model_path", ""))
        if self.best_k_models:  # the best and the k-th best, as Lightning derives them when it saves
            best, worst = (min, max) if self.mode == "min" else (max, min)
            self.best_model_path = best(self.best_k_models, key=self.best_k_models.get)
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
            self.best_model_score = self.best_k_models[self.best_model_path]
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        else:
            self.best_model_path = own(state["best_model_path"])
            self.best_model_score = state["best_model_score"] if self.best_model_path else None


def _resolved(path: Optional[str]) -> Optional[Path]:
    """``path`` resolved, if it is a local path the OS can take: no URL (fsspec would act on it elsewhere), no NUL
    byte, not absurdly long, no link loop; else None."""
    if not path or len(path) > 4096 or "://" in path or "\x00" in path:
        return None
    try:
        return Path(path).resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a link loop, on Python < 3.13
        return None


def _is_link(path: str) -> bool:
    try:
        return Path(path).is_symlink()
    except (OSError, ValueError):
        return True  # a name the OS refuses is no file of this folder


class LessonCheckpoint(ConfinedCheckpoint):
    """A :class:`ConfinedCheckpoint` for the best checkpoints on a monitored metric, where NaN is never the best.

    ``save_last`` is refused: since Lightning 2.6 it writes ``last.ckpt`` only beside a new best, so a resume could
    redo epochs; the CLI's ``last_checkpoint`` writes it every epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last:
            raise ValueError(
                f"checkpoint save_last={self.save_last!r}: last.ckpt, the latest epoch, is written every epoch by "
                "last_checkpoint (a ModelCheckpoint of its own), not beside the best checkpoint; leave save_last unset"
            )

    def check_monitor_top_k(self, trainer: Trainer, current: Optional[torch.Tensor] = None) -> bool:
        """A NaN or infinite monitored value is never "best" (it is synced, so all ranks agree)."""
        if current is not None and not torch.isfinite(current).all():
            return False
        return super().check_monitor_top_k(trainer, current)


class CheckpointOnSigterm(Callback):
    """On SIGTERM, save ``last.ckpt`` where the fit stopped (after a batch, so a resume continues exactly); on Ctrl-C,
    which can land mid-step, save nothing and say which ``last.ckpt`` (the latest finished epoch) is kept."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Save (SIGTERM) or point at what is kept (Ctrl-C), and say how to resume (exit code 143 or 130)."""
        checkpoint = trainer.checkpoint_callback
        if trainer.state.fn != TrainerFn.FITTING or checkpoint is None or checkpoint.dirpath is None:
            return
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(path)
            said = f"on SIGTERM, saved {shown(path)}"
        elif not isinstance(exception, KeyboardInterrupt):
            return
        elif os.path.isfile(path):
            said = f"on Ctrl-C, kept {shown(path)} (the latest finished epoch)"
        else:
            said, path = "on Ctrl-C: no epoch had finished, so no checkpoint was kept", ""
        if trainer.is_global_zero:
            resume = f"; resume with `fit --ckpt_path {shown(path)}` and the same config" if path else ""
            sys.stderr.write(f"gpu_lessons: {said}{resume}\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, saving atomically and loading with :func:`load_checkpoint`, or taking the checkpoint
    the CLI already read and checked (:meth:`hand_over`): what is restored is what was checked."""

    def __init__(self) -> None:
        super().__init__()
        self._handed_over: Optional[tuple[Path, dict[str, Any]]] = None

    def hand_over(self, path: PathLike, checkpoint: dict[str, Any]) -> None:
        """The next load of ``path`` returns ``checkpoint`` (read and checked already) instead of reading it again."""
        self._handed_over = (Path(path).resolve(), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` atomically: never a partial file where a good one was."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        write_atomically(Path(path), lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """The checkpoint handed over for ``path``, or ``path`` read with :func:`load_checkpoint`."""
        handed, self._handed_over = self._handed_over, None
        if handed is None:
            return load_checkpoint(path, map_location=map_location or "cpu", weights_only=weights_only)
        if handed[0] != Path(path).resolve():  # not the checked file: never an unchecked one in its place
            raise CheckpointError(f"{path} is not the checkpoint that was checked ({handed[0]}); nothing was loaded")
        return handed[1]
