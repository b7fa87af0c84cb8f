"""Errors the user can fix, and the one path by which every ``gpu-lessons`` subcommand reports them: one ``error:``
line on stderr, no traceback, and exit code 1 (ran and failed: a NaN loss, a full disk), 2 (bad input), 130
(Ctrl-C) or 143 (SIGTERM). Anything else is a bug, and keeps its traceback."""

import argparse
import difflib
import errno
import inspect
import re
import reprlib
import sys
from typing import Callable, NoReturn, Optional

from jsonargparse import ArgumentError
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SIGTERM = 143  # 128 + the signal's number, as a shell reports it
EXIT_CTRL_C = 130
PREVIEW = 60  # characters of someone else's value that a message echoes

# OSErrors that describe the machine (disk, permissions, paths), not a bug
_MACHINE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.EMFILE, errno.EIO, errno.EEXIST,
}


class UserError(Exception):
    """A problem with the user's input, files or machine. ``exit_code`` is what the command exits with."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe to load or from another lesson."""


class DatasetError(UserError, RuntimeError):
    """The dataset's files are damaged: truncated, not the dataset's format, or inconsistent."""


class DatasetMissingError(DatasetError):
    """The dataset's files are not on disk and could not be downloaded."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: the loss (or the weights about to be saved) became NaN or infinite."""

    exit_code = EXIT_FAILED


class OutputExistsError(UserError, FileExistsError):
    """A file a command would write is already there: no command writes over a file unless told to."""

    def __init__(self, path: object, replace_with: str = "") -> None:
        self.path = path
        choices = f"choose another name, or pass {replace_with} to replace it" if replace_with else "or choose another name"
        super().__init__(f"{path} already exists and was left as it is; delete or rename it, {choices}")


def print_error(message: object) -> None:
    """Report a problem the way every command does: one ``error:`` line on stderr."""
    sys.stderr.write(f"error: {message}\n")


def exit_code(error: BaseException) -> Optional[int]:
    """For a problem the user can fix, print its one line and return the exit code; for a bug, ``None``."""
    if isinstance(error, SIGTERMException):  # not errors: the run was asked to stop
        sys.stderr.write("stopped by SIGTERM\n")
        return EXIT_SIGTERM
    if isinstance(error, KeyboardInterrupt):
        sys.stderr.write("stopped by Ctrl-C\n")
        return EXIT_CTRL_C
    if isinstance(error, UserError):
        print_error(error)
        return error.exit_code
    if isinstance(error, ArgumentError):  # jsonargparse's (the CLI's parser has exit_on_error=False)
        print_error(one_line(error))
        return EXIT_BAD_INPUT
    if isinstance(error, MisconfigurationException):
        print_error(f"invalid configuration: {one_line(error)}")
        return EXIT_BAD_INPUT
    if isinstance(error, OSError) and error.errno in _MACHINE_ERRNOS:  # files already written are intact (atomic saves)
        where = f"{error.filename}: " if error.filename else ""
        print_error(f"cannot write or read {where}{error.strerror or error}")
        return EXIT_FAILED
    return None


def run_command(command: Callable[[], int]) -> int:
    """Run a subcommand: its own exit code, or that of the error it raised (:func:`exit_code`)."""
    try:
        return command()
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        return code


def positive_int(text: str) -> int:
    """An argparse ``type`` for the tools' counts: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class CommandParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are a :class:`UserError` (one line), not the usage and an exit."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


_JSONARGPARSE_NOISE = (
    "Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
    "Expected a <class 'NoneType'>",
)


def one_line(error: BaseException) -> str:
    """An error's message as one line: of jsonargparse's multi-line reports, the full key, the innermost reason and,
    for an unknown option, the closest real one."""
    keys, reasons, given, class_path, nested = [], [], None, None, False
    for line in (line.strip() for line in str(error).splitlines()):
        line = line.removeprefix("- ").strip()
        if match := re.match(r'Parser key "([^"]+)":\s*(.*)', line):
            keys.append(match.group(1) if not keys or class_path is None else f"init_args.{match.group(1)}")
            line = match.group(2)
        nested = nested or bool(keys) or line.startswith(_JSONARGPARSE_NOISE)
        if not line or line.startswith(_JSONARGPARSE_NOISE):
            continue
        if line.startswith("Given value:"):
            given = line.removeprefix("Given value:").strip()
        elif match := re.match(r"Problem with given class_path '([^']+)':?", line):
            class_path = match.group(1)
        else:
            reasons.append(line)
    # in a jsonargparse report the innermost reason comes last; any other message leads with its point
    reason = (reasons[-1] if nested else reasons[0]) if reasons else str(error).strip() or type(error).__name__
    if given and reason.startswith("Expected") and "Got value" not in reason and not given.startswith("NestedArg("):
        reason += f", got {given!r}"
    reason = re.sub(r"^Expected an? ", "expected ", re.sub(r"<class '([\w.]+)'>", r"\1", reason))
    if (unknown := re.fullmatch(r"Option '([^']+)' is not accepted", reason)) and class_path:
        cls = imported_class(class_path)
        known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")] if cls else []
        close = difflib.get_close_matches(unknown.group(1), known, n=1)
        reason = f"{class_path.rsplit('.', 1)[-1]} has no argument {unknown.group(1)!r}" + (
            f"; did you mean {close[0]!r}?" if close else f" (its arguments: {', '.join(known)})"
        )
        keys.append(f"init_args.{unknown.group(1)}")
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def imported_class(class_path: str) -> Optional[type]:
    """The class ``class_path`` names if its module is already imported, else ``None``: never imports, as that would
    run code a checkpoint (or a message) names."""
    module, _, name = class_path.rpartition(".")
    # vars(), not getattr(): a package's __getattr__ may import a submodule for a name it does not have
    found = vars(sys.modules[module]).get(name) if module in sys.modules else None
    return found if isinstance(found, type) else None


def preview(value: object, limit: int = PREVIEW) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a message may echo of someone else's data (a long string is
    cut before ``repr``, never copied whole)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value):,} characters)"
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        shown = str(value) if isinstance(value, BaseException) else reprlib.repr(value)
    except Exception:  # a recursive or broken object: its type says enough
        shown = f"a {type(value).__name__}"
    return shown if len(shown) <= limit else shown[:limit] + "..."
