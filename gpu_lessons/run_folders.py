"""Where a run's files go: each ``fit`` gets ``checkpoints/<run>/version_N/`` beside ``lightning_logs/<run>/version_N/``
(N claimed with ``mkdir``), removed again if it fails before its first checkpoint; ``--ckpt_path last``/``best``."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import SaveConfigCallback

from gpu_lessons.atomic_files import missing_folders, remove_empty_folders
from gpu_lessons.errors import CheckpointError, UserError, preview
from gpu_lessons.safe_checkpoints import load_checkpoint

RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
VERSION = re.compile(r"version_(\d+)")
MAX_CLAIMS = 1000  # version numbers tried one after another by runs started at the same moment


class RunFolders:
    """The folders of one command's run, placed in its config before anything is built. ``set_keys`` are the config
    keys placed here: the run's ``config.yaml`` saves them unset, so that it runs again into the next folders."""

    def __init__(self) -> None:
        self.set_keys: list[str] = []
        self._new: list[Path] = []  # the run's folders that did not exist before it
        self._new_parents: list[Path] = []  # folders above them that did not exist before it

    def place(self, config: Namespace, subcommand: Optional[str]) -> None:
        """Set the checkpoint folders (and the logger's version, for fit): a fit's folders of its own; for the other
        subcommands, the folder of the checkpoint they read."""
        if subcommand == "fit":
            self._place_fit(config)
        elif config.checkpoint.dirpath is None:
            ckpt_path = config.get("ckpt_path")
            config.checkpoint.dirpath = str(Path(ckpt_path).parent) if ckpt_path else os.path.join("checkpoints", config.run_name)
            self.set_keys.append("checkpoint.dirpath")
        if config.last_checkpoint.dirpath is None:
            config.last_checkpoint.dirpath = config.checkpoint.dirpath
            self.set_keys.append("last_checkpoint.dirpath")
        elif os.path.abspath(config.last_checkpoint.dirpath) != os.path.abspath(config.checkpoint.dirpath):
            # one folder per run is what keeps runs apart, SIGTERM saves beside them and --ckpt_path last finds them
            raise UserError(
                "last_checkpoint.dirpath must be the run's checkpoint folder; choose the folder with --checkpoint.dirpath"
            )

    def _place_fit(self, config: Namespace) -> None:
        """A fit's own folders, N one past the highest in either root (a resume is a new fit and gets the next N); a
        folder that already holds checkpoints is only written to by a resume from one of them."""
        logger = config.trainer.logger
        logger_args = logger.init_args if isinstance(logger, Namespace) and "version" in logger.init_args else None
        if config.checkpoint.dirpath is None:
            run_root = Path("checkpoints", config.run_name)
            version = None if logger_args is None else logger_args.version
            if version is None:
                version = self._claim_version(run_root, None if logger_args is None else _log_root(logger_args))
                if logger_args is not None:
                    logger_args.version = version
                    self.set_keys.append("trainer.logger.init_args.version")
            config.checkpoint.dirpath = str(run_root / version_folder(version))
            self.set_keys.append("checkpoint.dirpath")
        folder = Path(config.checkpoint.dirpath)
        ensure_writable(folder, "checkpoints")
        existing = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        resumes_here = config.ckpt_path is not None and Path(config.ckpt_path).resolve().parent == folder.resolve()
        if existing and not resumes_here:
            raise UserError(
                f"{folder} already holds another run's checkpoints ({', '.join(existing[:3])}); a run never writes "
                "over them: leave out --checkpoint.dirpath (each fit gets checkpoints/<run>/version_N/), choose "
                "another folder, or resume with --ckpt_path from that folder"
            )
        self._note_new(folder)
        if logger_args is not None and logger_args.version is not None:
            self._note_new(_log_root(logger_args) / version_folder(logger_args.version))

    def _note_new(self, folder: Path) -> None:
        """Remember ``folder`` if this run will create it, and the parents it will create with it."""
        if folder.exists() or folder in self._new:
            return
        self._new.append(folder)
        self._new_parents += missing_folders(folder.parent)

    def _claim_version(self, *roots: Optional[Path]) -> int:
        """The next N whose ``version_N`` is free under every root, claimed by creating those folders: ``mkdir``
        fails where a run started at the same moment took N first, and this run then tries N + 1."""
        for root in filter(None, roots):  # first: resolving a link loop would raise
            ensure_writable(root, "the run's folders")
        unique = list({root.resolve(): root for root in roots if root is not None}.values())  # logs beside checkpoints
        for root in unique:
            self._new_parents += missing_folders(root)
        first = next_version(*unique)
        for version in range(first, first + MAX_CLAIMS):
            made: list[Path] = []
            try:
                for root in unique:
                    claimed = root / version_folder(version)
                    root.mkdir(parents=True, exist_ok=True)
                    claimed.mkdir()
                    made.append(claimed)
                self._new += made
                return version
            except FileExistsError:
                if not claimed.is_dir():  # a file where the folder would go: no later N would do better
                    raise UserError(f"cannot make the run's folder {claimed}: a file is in the way") from None
            finally:
                if len(made) < len(unique):  # this N was taken (or the claim was interrupted): undo its half
                    for folder in made:
                        folder.rmdir()
        raise UserError(f"no free version_N found in {MAX_CLAIMS} tries under {', '.join(map(str, unique))}")

    def remove_if_nothing_saved(self) -> None:
        """A run that fails before its first checkpoint leaves no folders behind (one that saved keeps its logs)."""
        if any(folder.is_dir() and any(folder.rglob("*.ckpt")) for folder in self._new):
            return
        for folder in self._new:
            shutil.rmtree(folder, ignore_errors=True)
        remove_empty_folders(self._new_parents)  # rmdir, never rmtree: another run may share a parent


class NonOverwritingSaveConfigCallback(SaveConfigCallback):
    """Saves the run's config beside its logs (``config-N.yaml`` if a ``config.yaml`` is there), with the keys in
    ``run_folders`` (the folders the CLI picked) unset, so that ``fit --config .../config.yaml`` runs again."""

    def __init__(self, *args: Any, run_folders: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_folders = run_folders

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Save the config, except for predict (printed, not logged: no log folder)."""
        if stage == "predict":
            return
        log_dir, n = trainer.log_dir, 0
        while log_dir is not None and os.path.isfile(os.path.join(log_dir, self.config_filename)):
            n += 1
            self.config_filename = f"config-{n}.yaml"
        if self.run_folders:
            self.config = self.config.clone()
            for key in self.run_folders:
                self.config[key] = None
        super().setup(trainer, pl_module, stage)


def ensure_writable(folder: Path, what: str) -> None:
    """Fail now, not after training, if ``folder`` cannot be created or written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # exists() is False for a link that loops or points nowhere
            raise UserError(f"cannot write {what} to {folder}: {existing} is a symbolic link that loops or points nowhere")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {what} to {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} to {folder}: {existing} is not writable")


def checked_run_name(name: str) -> str:
    """``name`` if it is a plain folder name."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(
            f"--run_name must be a plain folder name (letters, digits, '_', '.', '-'), got {preview(name)}: it names "
            "checkpoints/<run_name>/ and lightning_logs/<run_name>/"
        )
    return name


def default_run_name(config: Namespace) -> str:
    """The first config file's name (``cnn`` for ``configs/cnn.yaml``), else the lesson's (``CNNLesson``: ``cnn``)."""
    if config.get("config"):
        return Path(str(config.config[0])).stem
    return str(config.model.class_path).rsplit(".", 1)[-1].removesuffix("Lesson").lower() or "lesson"


def _log_root(logger_args: Namespace) -> Path:
    """The folder a logger writes its ``version_N`` folders into (TensorBoardLogger's and CSVLogger's layout)."""
    return Path(logger_args.save_dir, logger_args.get("name") or "")


def version_folder(version: Any) -> str:
    """The folder a logger version names, as TensorBoardLogger and CSVLogger spell it: ``version_3``, or a string."""
    return version if isinstance(version, str) else f"version_{version}"


def next_version(*roots: Optional[Path]) -> int:
    """One past the highest ``version_N`` in any of ``roots`` (0 for none), so checkpoints and logs share N."""
    numbers = [
        int(match.group(1))
        for root in roots
        if root is not None and root.is_dir()
        for entry in root.iterdir()
        if (match := VERSION.fullmatch(entry.name))
    ]
    return max(numbers, default=-1) + 1


def checkpoint_alias(alias: str, run_name: str, folder: Optional[str] = None, flag: str = "--ckpt_path") -> Path:
    """``--ckpt_path last`` / ``best``: the newest run's ``last.ckpt`` / best checkpoint in ``folder`` (by default
    ``checkpoints/<run_name>/``)."""
    folder = Path(folder or os.path.join("checkpoints", run_name))
    if alias not in ("last", "best"):
        raise UserError(f"{flag} {alias} is not supported: give a checkpoint file, or last or best")
    numbered = {int(match[1]): p for p in folder.glob("version_*") if (match := VERSION.fullmatch(p.name))}
    runs = [numbered[n] for n in sorted(numbered)]
    newest = next((run / "last.ckpt" for run in [*reversed(runs), folder] if (run / "last.ckpt").is_file()), None)
    if newest is None:
        raise CheckpointError(
            f"{flag} {alias}: run {run_name!r} has no checkpoint in {folder}/ yet; train it first "
            "(fit with the same config) or give the checkpoint's path"
        )
    if alias == "last":
        return newest
    states = load_checkpoint(newest).get("callbacks")
    recorded = None
    for state in states.values() if isinstance(states, dict) else ():
        # the checkpoint callback with a monitor (the other one writes last.ckpt)
        if isinstance(state, dict) and state.get("monitor") and "best_model_path" in state:
            recorded = state["best_model_path"]
            break
    # only a checkpoint file beside last.ckpt (the folder may have moved since): a checkpoint names no other file
    best = newest.parent / Path(recorded).name if isinstance(recorded, str) and recorded.endswith(".ckpt") else None
    if best is not None and best.is_file() and not best.is_symlink():
        return best
    raise CheckpointError(
        f"{flag} best: {newest} records no best checkpoint that still exists (a run without validation, or with "
        "save_top_k 0, keeps only last.ckpt)"
    )
