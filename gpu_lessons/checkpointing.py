"""The checkpoint callbacks and plugin the CLI adds: best and last checkpoints that only ever touch their own folder, a
save on SIGTERM, and atomic, weights-only checkpoint IO."""

from __future__ import annotations

import functools
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
    """Lightning's ``ModelCheckpoint``, restoring from a checkpoint only files of its own folder.

    Lightning hands a checkpoint's recorded paths (``best_model_path``, ``best_k_models``, ...) back to the callback,
    which later deletes the ones that rotate out, recursively; its "inside dirpath" test is textual, so a path with
    ``..`` passes. A checkpoint is someone else's data: here its state is checked (:func:`checked_model_checkpoint_state`:
    one error line for an unknown key or a wrong type), and a recorded path is kept only if, resolved, it is a
    ``.ckpt`` file directly in this callback's folder and not a link; others are dropped. A checkpoint of another
    folder (a resume, which writes a version folder of its own) restores nothing: its files are another run's to keep.
    """

    @property
    def state_key(self) -> str:
        """Lightning's ``ModelCheckpoint``'s key for this one (a subclass keeps its own): the checkpoints written
        with it resume into this without Lightning's "callbacks ... need to be provided" warning."""
        key = super().state_key
        return key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1) if type(self) is ConfinedCheckpoint else key

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = checked_model_checkpoint_state(state_dict, f"the checkpoint's {type(self).__name__}")
        recorded = state.get("dirpath")
        folder = _resolved(self.dirpath) if self.dirpath is not None else None
        if folder is None or not isinstance(recorded, str) or _resolved(recorded) != folder:
            return
        own = functools.partial(self._own_file, folder=folder)  # the one folder, resolved once
        self.best_k_models = {mine: score for path, score in state.get("best_k_models", {}).items() if (mine := own(path))}
        self.last_model_path = own(state.get("last_model_path", "")) or ""
        if self.best_k_models:  # the best and the k-th best, as Lightning derives them when it saves
            best, worst = (min, max) if self.mode == "min" else (max, min)
            self.best_model_path = best(self.best_k_models, key=self.best_k_models.get)
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
            self.best_model_score = self.best_k_models[self.best_model_path]
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        else:
            self.best_model_path = own(state["best_model_path"]) or ""
            self.best_model_score = state["best_model_score"] if self.best_model_path else None

    def _own_file(self, path: str, folder: Path) -> Optional[str]:
        """``path`` as this callback spells its files, if it is one of them (see the class docstring; ``folder`` is
        its own, resolved), else None."""
        assert self.dirpath is not None
        if Path(path).suffix != ".ckpt" or _is_link(path):
            return None
        resolved = _resolved(path)
        if resolved is None or resolved.parent != folder or (resolved.exists() and not resolved.is_file()):
            return None
        return os.path.join(self.dirpath, resolved.name)


def _resolved(path: str) -> Optional[Path]:
    """``path`` resolved, if it is a local path the OS can take: no URL (fsspec would act on it elsewhere), no NUL
    byte, not absurdly long, no link loop; else None."""
    if not path or len(path) > 4096 or "://" in path or "\x00" in path:
        return None
    try:
        return Path(path).resolve()
    except (OSError, ValueError):
        return None


def _is_link(path: str) -> bool:
    try:
        return Path(path).is_symlink()
    except (OSError, ValueError):
        return True  # a name the OS refuses is no file of this folder


class LessonCheckpoint(ConfinedCheckpoint):
    """A :class:`ConfinedCheckpoint` for the best checkpoints on a monitored metric, where NaN is never the best.

    ``last.ckpt`` is not its job: since Lightning 2.6, ``save_last=True`` writes it only beside a new best, so once
    the metric stops improving it would stay at an older epoch and a resume would silently redo epochs. The CLI
    writes it with a second, plain ``ModelCheckpoint`` (its ``last_checkpoint``: ``filename="last"``,
    ``monitor=None``), which saves every epoch; ``save_last`` is refused here, as it would write ``last-v1.ckpt``
    beside that one (or, with ``"link"``, make it a link to the best).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last:
            raise ValueError(
                f"checkpoint save_last={self.save_last!r}: last.ckpt, the latest epoch, is written every epoch by "
                "last_checkpoint (a ModelCheckpoint of its own), not beside the best checkpoint; leave save_last unset"
            )

    def check_monitor_top_k(self, trainer: Trainer, current: Optional[torch.Tensor] = None) -> bool:
        """A NaN or infinite monitored value is never "best" (Lightning would keep ``…val_lossnan.ckpt`` as the best
        model). The value is synced across processes, so all ranks agree."""
        if current is not None and not torch.isfinite(current).all():
            return False
        return super().check_monitor_top_k(trainer, current)


class CheckpointOnSigterm(Callback):
    """When a fit gets SIGTERM (a scheduler's or container's stop), save ``last.ckpt`` beside its checkpoints (in
    ``trainer.checkpoint_callback``'s folder) before it exits; on Ctrl-C, say which ``last.ckpt`` is kept.

    On SIGTERM Lightning stops after the current batch; the checkpoint holds that exact point (the position in the
    epoch included), so ``fit --ckpt_path .../last.ckpt`` continues as if never stopped. Ctrl-C can land anywhere in
    a step, so nothing is saved then: the ``last.ckpt`` of the latest finished epoch is what a resume starts from.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Save (SIGTERM) or point at what is kept (Ctrl-C), and say how to resume (exit code 143 or 130)."""
        checkpoint = trainer.checkpoint_callback
        if trainer.state.fn != TrainerFn.FITTING or checkpoint is None or checkpoint.dirpath is None:
            return
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(path)
            said = f"on SIGTERM, saved {shown(path)}"
        elif isinstance(exception, KeyboardInterrupt):
            if not os.path.isfile(path):
                said = "on Ctrl-C: no epoch had finished, so no checkpoint was kept"
                path = ""
            else:
                said = f"on Ctrl-C, kept {shown(path)} (the latest finished epoch)"
        else:
            return
        if trainer.is_global_zero:
            resume = f"; resume with `fit --ckpt_path {shown(path)}` and the same config" if path else ""
            sys.stderr.write(f"gpu_lessons: {said}{resume}\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with two guarantees.

    * Saving never leaves a partial file where a good checkpoint was (:func:`write_atomically`).
    * Loading uses :func:`load_checkpoint` (``weights_only=True``), or takes the checkpoint the CLI has already read
      and checked (:meth:`hand_over`): one read of the file, and what is restored is what was checked.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handed_over: Optional[tuple[Path, dict[str, Any]]] = None

    def hand_over(self, path: PathLike, checkpoint: dict[str, Any]) -> None:
        """The next load of ``path`` returns ``checkpoint`` (read and checked already) instead of reading it again."""
        self._handed_over = (Path(path).resolve(), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        write_atomically(Path(path), lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        handed, self._handed_over = self._handed_over, None
        if handed is None:
            return load_checkpoint(path, map_location=map_location or "cpu", weights_only=weights_only)
        if handed[0] != Path(path).resolve():  # not the checked file: never an unchecked one in its place
            raise CheckpointError(f"{path} is not the checkpoint that was checked ({handed[0]}); nothing was loaded")
        return handed[1]
