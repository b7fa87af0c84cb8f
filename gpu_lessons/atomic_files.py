"""Files written atomically: a reader, or a crash, sees the old bytes or the new ones, never a mix; and a file the
user asked for is never written over unless they said so."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path
from typing import IO, Callable, Iterable, Union

from gpu_lessons.errors import OutputExistsError

PathLike = Union[str, "os.PathLike[str]"]


def write_atomically(path: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool = True) -> None:
    """Write ``path`` through an fsynced temporary file in its own folder (a rename there is one step), named with
    this machine and process so that only a dead writer's leftovers are removed. With ``overwrite=False`` it is
    linked into place, a :class:`FileExistsError` if ``path`` exists by then (no check-then-write race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if _writer_is_gone(stale):
            stale.unlink(missing_ok=True)
    temporary = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # os.open rather than mkstemp: mkstemp's files are owner-only (0600); these get the usual umask bits
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise _naming(error, path, temporary) from None
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
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, FileExistsError):
            raise _naming(error, path, temporary) from None
        raise
    try:  # make the rename itself durable (folders cannot be opened on Windows)
        descriptor = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _naming(error: OSError, path: Path, temporary: Path) -> OSError:
    """``error`` naming ``path``: a write or fsync names no file, and the temporary one is an implementation detail."""
    if error.errno is None or error.filename not in (None, str(temporary), temporary):
        return error
    return type(error)(error.errno, error.strerror, str(path))


def refuse_existing(path: PathLike) -> Path:
    """``path``, or an :class:`OutputExistsError` if a file or link (even a dangling one) is there: the check before
    the work (:func:`write_new_file` checks again as it writes)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputExistsError(path)
    return path


def write_new_file(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically, never over an existing file (an :class:`OutputExistsError`, also one
    that appeared meanwhile) unless ``overwrite``: how every command writes a file the user asked for."""
    path = Path(path)
    try:
        write_atomically(path, lambda file: file.write(data), overwrite=overwrite)
    except FileExistsError:
        if not (path.exists() or path.is_symlink()):  # not ``path`` but a folder on its way (a file named like it)
            raise
        raise OutputExistsError(path) from None
    return path


_HOST = socket.gethostname().replace(".", "_") or "host"


def _writer_is_gone(temporary: Path) -> bool:
    """Whether the writer that named ``temporary`` (``.NAME.HOST.PID.TOKEN.tmp``) ran on this machine and is gone."""
    parts = temporary.name.rsplit(".", 4)
    if len(parts) != 5 or parts[1] != _HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: the process exists but is another user's
        pass
    return False


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and the folders above it that do not exist yet (deepest first): what making it would create."""
    return [path for path in (folder, *folder.parents) if not path.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove each of ``folders`` that is empty, deepest first: one that another process has written into stays."""
    for folder in sorted(set(folders), key=lambda path: len(path.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
