"""Errors the CLI reports as one ``error:`` line instead of a traceback: the user can fix them."""

import sys


class UserError(Exception):
    """A problem with the user's input, files or machine. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe to load or from another lesson."""


class DatasetError(UserError, RuntimeError):
    """The dataset's files are damaged: truncated, not the dataset's format, or inconsistent."""


class DatasetMissingError(DatasetError):
    """The dataset's files are not on disk and could not be downloaded."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: the loss (or the weights about to be saved) became NaN or infinite."""

    exit_code = 1


def print_error(message: object) -> None:
    """Report a problem the way the CLI does: one ``error:`` line on stderr."""
    sys.stderr.write(f"error: {message}\n")
