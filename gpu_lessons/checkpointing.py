"""Checkpoints that are written atomically and loaded without ever running code from them."""

from __future__ import annotations

import inspect
import os
import pickle
import secrets
import socket
import sys
import types
import typing
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Literal, Optional, TypeVar, Union

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpu_lessons.errors import CheckpointError, OutputExistsError

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

# What LightningCLI records in every checkpoint it writes. It is accepted (so those checkpoints load) but never
# called: classes are built here from the checked plain values, never by an instantiator a checkpoint names.
LIGHTNING_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_PLAIN_SCALARS = (bool, int, float, str, type(None))
_SEQUENCES = (list, tuple, typing.get_origin(typing.Sequence[int]))


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: Optional[bool] = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never pickled code. Every read of a
    checkpoint goes through here (the CLI's, Lightning's through :class:`AtomicCheckpointIO`, ``load_from_checkpoint``,
    the export, the pictures).

    ``weights_only`` is for callers that hand on Lightning's or torch's argument: ``None`` or ``True``; ``False`` is
    refused. Passing ``weights_only=True`` to torch explicitly also overrides ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
    Raises :class:`CheckpointError` with what is wrong instead of torch's unpickling traceback.
    """
    if weights_only is False:
        raise CheckpointError("gpu_lessons loads checkpoints with weights_only=True only")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save's format; a truncated file loses its zip directory
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, or another kind of file)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refusing to load it: it holds Python objects other than tensors and plain data, which could "
            f"run code when unpickled ({reason})"
        ) from None
    except Exception as error:  # a damaged archive fails in many ways; all mean the same to the user
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (it has no state_dict)")
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} is damaged: its state_dict is not a mapping of parameter names to tensors")
    return checkpoint


def imported_class(class_path: str) -> Optional[type]:
    """The class a checkpoint names, if its module is already imported, else ``None``.

    Never imports: importing a module because a checkpoint names it would run that module's code. Different spellings
    of one class (``gpu_lessons.models.CNNLesson``, ``gpu_lessons.models.cnn.CNNLesson``) give the same class.
    """
    module, _, name = class_path.rpartition(".")
    # vars(), not getattr(): a package's __getattr__ may import a submodule for a name it does not have
    found = vars(sys.modules[module]).get(name) if module in sys.modules else None
    return found if isinstance(found, type) else None


def checked_hyperparameters(checkpoint: dict[str, Any], base: type[T], source: object) -> tuple[type[T], dict[str, Any]]:
    """The class a checkpoint was written by and its constructor arguments, as data only: nothing in it chooses code.

    A checkpoint is someone else's data, and LightningCLI's and Lightning's ``load_from_checkpoint`` would let its
    ``hyper_parameters`` pick code: a ``class_path`` for jsonargparse to import and call, an ``_instantiator`` to
    import, a string that a ``Callable`` argument resolves by importing. Here:

    * ``_class_path`` must name an already-imported subclass of ``base`` (nothing is imported); without it, ``base``;
    * ``_instantiator`` may only be the value LightningCLI records, and is dropped;
    * every value must be plain data (``None``, bool, number, string, or lists of those), so no nested class spec;
    * an argument of the class's ``__init__`` whose type is not plain data (a network, an optimizer factory) is
      refused; keys ``__init__`` does not take are dropped, as Lightning's own loading drops them.

    Anything else raises :class:`CheckpointError` naming the key. ``source`` (the file) is only for messages.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict) or not all(isinstance(key, str) for key in hparams):
        raise CheckpointError(f"{source}: its hyper_parameters are not a mapping of names to values")
    hparams = dict(hparams)
    instantiator = hparams.pop("_instantiator", LIGHTNING_CLI_INSTANTIATOR)
    if instantiator != LIGHTNING_CLI_INSTANTIATOR:
        raise CheckpointError(
            f"{source}: refusing to load it: its hyperparameters name the instantiator {instantiator!r}; "
            "a checkpoint may not choose code, and nothing from it was imported"
        )
    cls = base
    class_path = hparams.pop("_class_path", None)
    if class_path is not None:
        named = imported_class(class_path) if isinstance(class_path, str) else None
        if named is not None and issubclass(named, LightningModule) and not issubclass(named, base):
            # another lesson's checkpoint, e.g. an MLPLesson's given to CNNLesson.load_from_checkpoint
            raise CheckpointError(f"{source} holds a {named.__name__}, not a {base.__name__}")
        if named is None or not issubclass(named, base):
            raise CheckpointError(
                f"{source}: refusing to load it: its hyperparameters name the class {class_path!r}, which is not an "
                f"imported {base.__name__}; a checkpoint may not choose code, and nothing from it was imported"
            )
        cls = named
    parameters = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    arguments = {}
    for key, value in hparams.items():
        if not _is_plain_value(value):
            raise CheckpointError(
                f"{source}: refusing to load it: hyperparameter {key!r} is not plain data ({_describe(value)}); "
                "a checkpoint may not choose code"
            )
        if key not in parameters:
            continue
        annotation = hints.get(key, Any)
        if not _is_plain_type(annotation):
            raise CheckpointError(
                f"{source}: refusing to load it: hyperparameter {key!r} sets {cls.__name__}'s {key}, whose type "
                "is not plain data (it takes code: a class or a callable); a checkpoint may only hold plain values"
            )
        if not _conforms(value, annotation):
            raise CheckpointError(
                f"{source}: hyperparameter {key!r} is {value!r}, which {cls.__name__}'s {key} does not take "
                f"({_type_name(annotation)})"
            )
        arguments[key] = value
    return cls, arguments


def check_weights_fit(checkpoint: dict[str, Any], model: torch.nn.Module, source: object) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's ``state_dict`` has exactly ``model``'s names and shapes
    (saying which differ), before Lightning's ``load_state_dict`` would fail with a traceback mid-run."""
    expected = model.state_dict()
    saved = checkpoint["state_dict"]
    problems = [f"no {name}" for name in expected if name not in saved]
    problems += [f"an unexpected {name}" for name in saved if name not in expected]
    problems += [
        f"{name} of shape {list(saved[name].shape)}, not {list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in saved and saved[name].shape != tensor.shape
    ]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{source} does not hold this {type(model).__name__}'s weights: it has {'; '.join(problems[:3])}{more}"
        )


def check_resumable(checkpoint: dict[str, Any], model: torch.nn.Module, source: object) -> None:
    """Raise :class:`CheckpointError` unless ``fit`` can resume from the checkpoint: it has the loops' and
    optimizer's state (not only weights) and, for a lesson, that state is its configured optimizer's."""
    missing = [key for key in ("loops", "optimizer_states") if not isinstance(checkpoint.get(key), (dict, list))]
    if missing:
        raise CheckpointError(
            f"{source} holds no {' or '.join(missing)} (a weights-only checkpoint, or a damaged one): fit cannot resume "
            "from it; test or predict with it, or load it in Python (load_from_checkpoint) to train on from its weights"
        )
    schedulers = checkpoint.get("lr_schedulers", [])
    if not isinstance(schedulers, list) or not all(isinstance(state, dict) for state in schedulers):
        raise CheckpointError(f"{source} is damaged: its lr_schedulers state is not a list of scheduler states")
    factory = getattr(model, "optimizer_factory", None)
    states = checkpoint["optimizer_states"]
    if factory is None or not isinstance(states, list) or len(states) != 1:
        return
    groups = states[0].get("param_groups") if isinstance(states[0], dict) else None
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        raise CheckpointError(f"{source} is damaged: its optimizer state has no usable param_groups")
    # Load the saved settings into the configured optimizer on stand-in parameters: what the optimizer then still
    # lacks (SGD's momentum after Adam's state) would fail with a KeyError at the first step.
    probe = factory([torch.nn.Parameter(torch.zeros(1)) for _ in groups[0].get("params", ())])
    try:
        probe.load_state_dict({"state": {}, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{source}: its optimizer state does not fit the configured optimizer ({error})") from None
    lacking = sorted(set(probe.defaults) - set(probe.param_groups[0]))
    if lacking:
        raise CheckpointError(
            f"{source} was trained with another optimizer than the configured {type(probe).__name__} (its state has no "
            f"{', '.join(lacking)}): resume with the optimizer it was trained with (the run's config.yaml says which)"
        )


def _is_plain_value(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain_value(item) for item in value)
    return isinstance(value, _PLAIN_SCALARS)


def _is_plain_type(annotation: object) -> bool:
    """Whether an argument of this type can only receive plain data (jsonargparse would not import anything for it)."""
    if annotation in _PLAIN_SCALARS:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return all(_is_plain_value(choice) for choice in args)
    if origin in (Union, types.UnionType, *_SEQUENCES):
        return all(arg is Ellipsis or _is_plain_type(arg) for arg in args)
    return False


def _conforms(value: object, annotation: object) -> bool:
    """Whether a plain value is one that ``annotation`` (a plain type, see :func:`_is_plain_type`) accepts."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin in _SEQUENCES:
        items = [arg for arg in args if arg is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(_conforms(v, arg) for arg in items) for v in value or ())
    if isinstance(value, bool):  # a bool is an int to Python, not to a config
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation)  # type: ignore[arg-type]


def _type_name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _describe(value: object) -> str:
    if isinstance(value, dict) and ("class_path" in value or "_class_path" in value):
        return f"a class spec for {value.get('class_path', value.get('_class_path'))!r}"
    return f"a {type(value).__name__}"


class LessonCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for the best checkpoints on a monitored metric, where NaN is never the best.

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
    ``trainer.checkpoint_callback``'s folder) before it exits.

    Lightning stops after the current batch; the checkpoint holds that exact point (the position in the epoch
    included), so ``fit --ckpt_path .../last.ckpt`` continues as if never stopped.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Save, and say where and how to resume (the exception then ends the run with exit code 143)."""
        checkpoint = trainer.checkpoint_callback
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING and checkpoint is not None:
            path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                shown = path if os.path.relpath(path).startswith("..") else os.path.relpath(path)
                sys.stderr.write(f"gpu_lessons: on SIGTERM, saved {shown}; resume with `fit --ckpt_path {shown}`\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with two guarantees.

    * Saving never leaves a partial file where a good checkpoint was (:func:`write_atomically`).
    * Loading uses :func:`load_checkpoint` (``weights_only=True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        write_atomically(Path(path), lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu", weights_only=weights_only)


def write_atomically(path: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool = True) -> None:
    """Write ``path`` so that a reader (or a crash) sees the old bytes or the new ones, never a mix.

    The bytes go to a temporary file in the *same folder* (so the rename cannot become a cross-filesystem copy, as
    with ``TMPDIR`` elsewhere), are fsynced, and ``os.replace`` swaps the file in one step. The temporary file's name
    holds this machine's name and the writer's process id: one that a killed writer of the same path left behind is
    removed first, and another live writer's never is. With ``overwrite=False`` the file is linked into place, which
    fails with :class:`FileExistsError` if ``path`` exists by then (no check-then-write race).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if _writer_is_gone(stale):
            stale.unlink(missing_ok=True)
    temporary = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open rather than mkstemp: mkstemp's files are owner-only (0600); these get the usual umask bits
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            temporary.unlink()
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def refuse_existing(path: PathLike) -> Path:
    """``path``, or an :class:`OutputExistsError` if a file (or a link, even a dangling one) is there already: the
    check before the work that makes a new file's bytes (:func:`write_new_file` checks again as it writes)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputExistsError(path)
    return path


def write_new_file(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_atomically`), never over an existing file unless
    ``overwrite``: how every command writes a file the user asked for (predictions, a picture, weights, a config).

    An existing file is an :class:`OutputExistsError`, also one that appeared while the data was made (the file is
    linked into place, so there is no check-then-write race). A write error names ``path``.
    """
    path = Path(path)
    try:
        write_atomically(path, lambda file: file.write(data), overwrite=overwrite)
    except FileExistsError:
        if not (path.exists() or path.is_symlink()):  # not ``path`` but a folder on its way (a file named like it)
            raise
        raise OutputExistsError(path) from None
    except OSError as error:
        if error.filename is None and error.errno is not None:  # from fsync or write, which name no file
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    return path


_HOST = socket.gethostname().replace(".", "_") or "host"


def _writer_is_gone(temporary: Path) -> bool:
    """Whether the process that named ``temporary`` (``.NAME.HOST.PID.TOKEN.tmp``) is provably dead: it ran on this
    machine and no process has its id. A file of another machine (a shared folder) or of a live process is kept."""
    parts = temporary.name.rsplit(".", 4)
    if len(parts) != 5 or parts[1] != _HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: the process exists but is another user's
        return False
    return False


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
