"""Errors the CLI reports as one ``error:`` line instead of a traceback: the user can fix them."""

import difflib
import inspect
import re
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


_JSONARGPARSE_NOISE = (
    "Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
    "Expected a <class 'NoneType'>",
)


def one_line(error: BaseException) -> str:
    """An error's message as one line for :func:`print_error`. jsonargparse's multi-line reports (Union subtypes,
    nested ``Parser key`` blocks, the given value, a constructor's own error wrapped in them) become the full key, the
    innermost reason and, for an unknown option, the closest real one; any other message is its one line."""
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
        from gpu_lessons.checkpointing import imported_class  # here: checkpointing imports this module

        cls = imported_class(class_path)
        known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")] if cls else []
        close = difflib.get_close_matches(unknown.group(1), known, n=1)
        reason = f"{class_path.rsplit('.', 1)[-1]} has no argument {unknown.group(1)!r}" + (
            f"; did you mean {close[0]!r}?" if close else f" (its arguments: {', '.join(known)})"
        )
        keys.append(f"init_args.{unknown.group(1)}")
    return f"{'.'.join(keys)}: {reason}" if keys else reason
