"""The shipped lessons (configs inside the package): ``gpu-lessons lessons`` lists them from the configs' header lines
and networks, ``--copy cnn`` writes ``./cnn.yaml`` to edit, and ``--config cnn`` runs the shipped one."""

from __future__ import annotations

import argparse
import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from gpu_lessons.atomic_files import write_new_file
from gpu_lessons.errors import CommandParser, UserError, run_command
from gpu_lessons.models.base import Lesson

_LESSON_NAME = re.compile(r"(\./)?(configs/)?(?P<name>[A-Za-z0-9_-]+)(\.ya?ml)?")
_HEADER = re.compile(r"# (?P<step>[^:]+): (?P<shows>.+)\n# Data: (?P<data>.+)\n# Result: (?P<result>.+)\n")


def shipped_configs() -> dict[str, Path]:
    """``{lesson name: its config file}`` for every config the package ships, in course order."""
    return dict(_shipped_configs())


@functools.cache  # the installed package's files do not change while it runs
def _shipped_configs() -> tuple[tuple[str, Path], ...]:
    try:
        folder = Path(str(resources.files("gpu_lessons.configs")))
    except ModuleNotFoundError:  # a source checkout that was never installed: the repo's configs/ itself
        folder = Path(__file__).resolve().parents[1] / "configs"
    return tuple((path.stem, path) for path in sorted(folder.glob("*.yaml"), key=_course_order))


def _course_order(path: Path) -> tuple:
    """The course's steps first, by number (``# Step 13, part 1`` before ``part 2``), then the fundamentals."""
    with path.open(encoding="utf-8") as file:
        step = file.readline().removeprefix("# ").split(":", 1)[0]
    number = re.search(r"\d+", step)
    return (not step.startswith("Step"), int(number.group()) if number else 0, step, path.stem)


def config_path(value: str) -> str:
    """What ``--config VALUE`` reads: an existing file; else a lesson's name (``cnn``, ``cnn.yaml``,
    ``configs/cnn.yaml``) as the shipped config (a :class:`UserError` if none); else the value, for jsonargparse."""
    if os.path.isfile(value):
        return value
    name = _LESSON_NAME.fullmatch(value)
    if name is None:
        return value
    shipped = shipped_configs()
    if name["name"] not in shipped:
        raise UserError(f"--config {value}: no such file, and not a shipped lesson; the lessons are {', '.join(shipped)}")
    return str(shipped[name["name"]])


@dataclass(frozen=True)
class LessonInfo:
    """One row of ``gpu-lessons lessons``."""

    name: str
    step: str
    shows: str
    network: str
    parameters: int
    data: str
    result: str


def describe(name: str) -> LessonInfo:
    """The lesson ``name`` as its shipped config describes it (the network is built to count its parameters)."""
    path = _shipped(name)
    text = path.read_text(encoding="utf-8")
    header = _HEADER.match(text)
    if header is None:
        raise ValueError(f"{path} does not open with the '# Step: shows', '# Data:', '# Result:' header lines")
    parser = _lesson_parser()
    config = parser.parse_object({"model": yaml.safe_load(text)["model"]})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    net = instantiate(config).model.net
    parameters = sum(p.numel() for p in net.parameters())
    return LessonInfo(name=name, network=type(net).__name__, parameters=parameters, **header.groupdict())


@functools.cache
def _lesson_parser() -> LightningArgumentParser:
    """A parser of a config's ``model`` section alone (building one costs more than parsing with it)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(Lesson, "model", subclass_mode=True)
    return parser


def markdown_table(lessons: list[LessonInfo]) -> str:
    """The lessons as the README's Markdown table."""
    header = "| lesson | course | network (parameters) | data | what it shows | result with the shipped config |"
    row = "| `{name}` | {step} | `{network}` ({parameters:,}) | {data} | {shows} | {result} |"
    return "\n".join([header, "|---|---|---|---|---|---|", *(row.format(**vars(lesson)) for lesson in lessons)])


def text_table(lessons: list[LessonInfo]) -> str:
    """The lessons for a terminal: one line of facts, then what the lesson shows, indented."""
    rows = [(f.name, f.step, f"{f.network} ({f.parameters:,})", f.data, f.result) for f in lessons]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row, lesson in zip(rows, lessons):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
        lines.append(" " * (widths[0] + 2) + lesson.shows)
    return "\n".join(lines)


def copy_config(name: str, folder: Path = Path(".")) -> Path:
    """Write the shipped config of ``name`` to ``folder/<name>.yaml`` to edit, never over a file or link."""
    return write_new_file(folder / f"{name}.yaml", _shipped(name).read_bytes())


def _shipped(name: str) -> Path:
    shipped = shipped_configs()
    if name not in shipped:
        raise UserError(f"no lesson {name!r}; the lessons are {', '.join(shipped)}")
    return shipped[name]


def _lessons(args: argparse.Namespace) -> int:
    if args.copy is not None:
        target = copy_config(args.copy)
        print(f"wrote {target}: change it, then run it with `gpu-lessons fit --config {target}`")
        return 0
    lessons = [describe(name) for name in shipped_configs()]
    print(markdown_table(lessons) if args.markdown else text_table(lessons))
    if not args.markdown:
        print("\nRun one with `gpu-lessons fit --config NAME`; `gpu-lessons lessons --copy NAME` writes NAME.yaml to edit.")
    return 0


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons lessons") -> int:
    """List the lessons, or copy one's config into the current folder; the exit code (:mod:`gpu_lessons.errors`)."""
    parser = CommandParser(prog=prog, description="The lessons this package ships, and what each reaches.")
    parser.add_argument("--copy", metavar="LESSON", help="write LESSON's config to ./LESSON.yaml (never over a file)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    return run_command(lambda: _lessons(parser.parse_args(argv)))
