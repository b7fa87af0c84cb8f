"""Reading checkpoints, which are someone else's data: tensors and plain values only, nothing in them chooses code,
and every part is checked before Lightning or the lesson acts on it."""

from __future__ import annotations

import inspect
import os
import pickle
import stat
import types
import typing
import zipfile
from pathlib import Path
from typing import IO, Any, Literal, Optional, TypeVar, Union

import torch
from lightning.pytorch import LightningModule

from gpu_lessons.atomic_files import PathLike
from gpu_lessons.checkpoint_states import PLAIN_SCALARS, check_callback_states, check_scaler_state
from gpu_lessons.errors import CheckpointError, imported_class, preview

T = TypeVar("T")

# What LightningCLI records in every checkpoint: accepted, never called (classes are built here from checked values)
LIGHTNING_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_SEQUENCES = (list, tuple, typing.get_origin(typing.Sequence[int]))

# Checked before anything walks a checkpoint: a 19 KB file of shared references can describe 2^40 entries.
MAX_DEPTH = 24  # a Lightning checkpoint nests 8 deep (loops); hyperparameters are flat
MAX_ENTRIES = 1_000_000  # containers' items visited, shared ones counted at each visit
MAX_STRING = 100_000  # characters in one string


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: Optional[bool] = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (explicitly, which also overrides
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; ``weights_only=False`` is refused): every read of one goes through here.
    Its archive, size, tensors, callback and GradScaler states are checked; anything wrong is a :class:`CheckpointError`."""
    if weights_only is False:
        raise CheckpointError("gpu_lessons loads checkpoints with weights_only=True only")
    path = Path(path)
    with _open_regular_file(path) as file:  # one open file for the checks and the load: nothing swaps in between
        _check_archive(file, path)
        file.seek(0)
        checkpoint = _unpickled(file, path, map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (it has no state_dict)")
    check_bounded(checkpoint, path)
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} is damaged: its state_dict is not a mapping of parameter names to tensors")
    check_callback_states(checkpoint, path)
    check_scaler_state(checkpoint, path)
    return checkpoint


def _check_archive(file: Any, path: Path) -> None:
    """torch.save's zip format, its entries stored as torch.save stores them (a truncated file loses its directory)."""
    try:
        with zipfile.ZipFile(file) as archive:
            compressed = [entry.filename for entry in archive.infolist() if entry.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, or another kind of file)") from None
    if compressed:
        raise CheckpointError(
            f"{path}: refusing to load it: {preview(compressed[0])} is compressed, which torch.save never does (a small "
            "compressed entry can unpack to gigabytes)"
        )


def _unpickled(file: Any, path: Path, map_location: Any) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refusing to load it: it holds Python objects other than tensors and plain data, which could "
            f"run code when unpickled ({preview(reason, 200)})"
        ) from None
    except Exception as error:  # a damaged archive fails in many ways; all mean the same to the user
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {preview(error, 200)})") from None


def _open_regular_file(path: Path) -> IO[bytes]:
    """``path`` opened (without blocking) if it is a regular file, else a :class:`CheckpointError` saying what is
    there: a FIFO or ``/dev/zero`` would block or never end."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        what = "a symbolic link to nothing" if path.is_symlink() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}") from None
    except OSError as error:  # ELOOP: a symbolic link loop; ENOTDIR, ENAMETOOLONG, EACCES: say which
        raise CheckpointError(f"{path}: cannot read it ({error.strerror})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or other special file"
        raise CheckpointError(f"{path} is {what}, not a checkpoint file")
    return os.fdopen(descriptor, "rb")


def check_bounded(checkpoint: Any, source: object) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint is within :data:`MAX_DEPTH`, :data:`MAX_ENTRIES` (shared
    references counted at each visit) and :data:`MAX_STRING`, and its tensors are ordinary. Iterative, so a list
    nested 5,000 deep is refused, not a RecursionError."""
    pending: list[tuple[str, Any, int]] = [("", checkpoint, 0)]
    visited = 0
    while pending:
        where, value, depth = pending.pop()
        visited += 1
        if visited > MAX_ENTRIES:
            raise CheckpointError(f"{source}: refusing to load it: it holds more than {MAX_ENTRIES:,} entries")
        if depth > MAX_DEPTH:
            where = where.split("[", 1)[0] or "it"  # the key, not a long run of indices
            raise CheckpointError(f"{source}: refusing to load it: {where} nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            pending.extend((f"{where}.{str(key)[:30]}".lstrip("."), item, depth + 1) for key, item in value.items())
            pending.extend((where, key, depth + 1) for key in value if not isinstance(key, (str, int)))
        elif isinstance(value, (list, tuple)):
            pending.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise CheckpointError(f"{source}: refusing to load it: {where} is a string of {len(value):,} characters")
        elif isinstance(value, torch.Tensor) and not _is_ordinary(value):
            raise CheckpointError(
                f"{source} is damaged: {where} is a {value.layout} tensor on {value.device.type} with strides "
                f"{list(value.stride()) if value.layout == torch.strided else '-'}; only dense tensors of real data "
                "are loaded"
            )


def _is_ordinary(tensor: torch.Tensor) -> bool:
    """Dense, real (not meta, quantized or complex), and no two elements in one place (an expanded tensor, or one
    whose strides overlap: in-place updates would then be silently wrong)."""
    if tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized or tensor.is_complex():
        return False
    if tensor.numel() <= 1:
        return True
    reach = 1  # with strides sorted, each must step past everything the smaller ones span
    for stride, size in sorted((abs(stride), size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1):
        if stride < reach:
            return False
        reach = stride * size
    return True


def checked_hyperparameters(checkpoint: dict[str, Any], base: type[T], source: object) -> tuple[type[T], dict[str, Any]]:
    """The class a checkpoint was written by (an imported subclass of ``base``, never imported) and its constructor
    arguments: plain values for plain-typed arguments only, as Lightning's loading would let them choose code.
    Keys ``__init__`` does not take are dropped, as Lightning drops them; anything else is a :class:`CheckpointError`."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict) or not all(isinstance(key, str) for key in hparams):
        raise CheckpointError(f"{source}: its hyper_parameters are not a mapping of names to values")
    hparams = dict(hparams)
    instantiator = hparams.pop("_instantiator", LIGHTNING_CLI_INSTANTIATOR)
    if instantiator != LIGHTNING_CLI_INSTANTIATOR:
        raise CheckpointError(
            f"{source}: refusing to load it: its hyperparameters name the instantiator {preview(instantiator)}; "
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
                f"{source}: refusing to load it: its hyperparameters name the class {preview(class_path)}, which is not an "
                f"imported {base.__name__}; a checkpoint may not choose code, and nothing from it was imported"
            )
        cls = named
    parameters = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    arguments = {}
    for key, value in hparams.items():
        if not _is_plain_value(value):
            raise CheckpointError(
                f"{source}: refusing to load it: hyperparameter {preview(key)} is not plain data ({_describe(value)}); "
                "a checkpoint may not choose code"
            )
        if key not in parameters:
            continue
        annotation = hints.get(key, Any)
        if not _is_plain_type(annotation):
            raise CheckpointError(
                f"{source}: refusing to load it: hyperparameter {preview(key)} sets {cls.__name__}'s {key}, whose type "
                "is not plain data (it takes code: a class or a callable); a checkpoint may only hold plain values"
            )
        if not _conforms(value, annotation):
            raise CheckpointError(
                f"{source}: hyperparameter {preview(key)} is {preview(value)}, which {cls.__name__}'s {key} does not take "
                f"({_type_name(annotation)})"
            )
        arguments[key] = value
    return cls, arguments


def check_weights_fit(checkpoint: dict[str, Any], model: torch.nn.Module, source: object) -> None:
    """Raise :class:`CheckpointError` (saying which differ) unless the checkpoint's weights have exactly ``model``'s
    names and shapes: Lightning would fail with a traceback mid-run."""
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


def _is_plain_value(value: object) -> bool:
    return all(map(_is_plain_value, value)) if isinstance(value, (list, tuple)) else isinstance(value, PLAIN_SCALARS)


def _is_plain_type(annotation: object) -> bool:
    """Whether an argument of this type only takes plain data (jsonargparse would import nothing for it)."""
    if annotation in PLAIN_SCALARS:
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
        return f"a class spec for {preview(value.get('class_path', value.get('_class_path')))}"
    return f"a {type(value).__name__}"
