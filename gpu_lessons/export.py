"""Plain weights (course step 11): ``gpu-lessons export`` writes a lesson checkpoint's network as the bare
``state_dict`` file the course's ``torch.save(model.state_dict(), "cnn.pth")`` writes, loadable with torch alone."""

from __future__ import annotations

import argparse
import inspect
import io
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gpu_lessons import models
from gpu_lessons.atomic_files import PathLike, refuse_existing, write_new_file
from gpu_lessons.safe_checkpoints import load_checkpoint
from gpu_lessons.data.mnist import DATASETS
from gpu_lessons.errors import CommandParser, OutputExistsError, UserError, run_command
from gpu_lessons.run_folders import checkpoint_alias
from gpu_lessons.models import BinaryTask, Lesson, MulticlassTask

# ``--lesson NAME``: the lesson of a checkpoint saved from Python, which records none
LESSONS: dict[str, type[Lesson]] = {
    lesson.__name__: lesson
    for lesson in (
        models.RegressionLesson, models.BlobClassifierLesson, models.MLPLesson, models.CNNLesson,
        models.DropoutLesson, models.SchedulerLesson, models.MNISTClassifierLesson,
    )
}


def save_plain_weights(net: nn.Module, output_path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``net.state_dict()`` to ``output_path`` atomically: ``torch.save``, or safetensors for ``.safetensors``;
    an existing file is only replaced with ``overwrite=True``."""
    output = Path(output_path) if overwrite else refuse_existing(output_path)
    state_dict = net.state_dict()
    if output.suffix == ".safetensors":
        try:
            from safetensors.torch import save as to_safetensors
        except ImportError:
            raise UserError(f"writing {output.name} needs the safetensors package: pip install safetensors") from None
        data = to_safetensors(state_dict)
    else:
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        data = buffer.getvalue()
    return write_new_file(output, data, overwrite=overwrite)


def export_plain_weights(
    checkpoint_path: PathLike,
    output_path: PathLike,
    lesson_class: Optional[type[Lesson]] = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a lesson checkpoint's plain network (``lesson.net``) weights to ``output_path``; ``lesson_class`` is
    needed only for a checkpoint saved from Python (``gpu-lessons fit`` records the lesson)."""
    lesson = (lesson_class or Lesson).load_from_checkpoint(checkpoint_path, map_location="cpu")
    return save_plain_weights(lesson.net, output_path, overwrite=overwrite)


def loading_hint(lesson: Lesson, output_path: PathLike, dataset: Optional[str] = None) -> str:
    """Lines of Python that load ``output_path`` into the plain network, say what it returns and, for the image
    lessons (``dataset`` is ``mnist`` or ``fashion_mnist``), how to prepare its input."""
    net_class = type(lesson.net)
    # The networks' constructor arguments (activation, dropout) are the lessons' hyperparameters of the same name.
    names = [name for name in inspect.signature(net_class).parameters if name in lesson.hparams]
    arguments = ", ".join(f"{name}={lesson.hparams[name]!r}" for name in names)
    module = "gpu_lessons.models" if getattr(models, net_class.__name__, None) is net_class else net_class.__module__
    output = Path(output_path)
    if output.suffix == ".safetensors":
        load = f"from safetensors.torch import load_file; net.load_state_dict(load_file({str(output)!r}))"
    else:
        load = f"net.load_state_dict(torch.load({str(output)!r}, weights_only=True))"
    if isinstance(lesson, BinaryTask):
        returns = "a logit per sample: probability = net(x).sigmoid()"
    elif isinstance(lesson, MulticlassTask):
        returns = "logits: class probabilities = net(x).softmax(dim=-1)"
    else:
        returns = "the prediction itself"
    lines = [
        f"import torch; from {module} import {net_class.__name__}",
        f"net = {net_class.__name__}({arguments}).eval(); {load}",
    ]
    if dataset is not None:  # the networks saw normalised pixels in training, and need them now
        _, mean, std = DATASETS[dataset]
        lines.append(
            f"from gpu_lessons.data import preprocess; x = preprocess(images_uint8, {dataset!r})"
            f"  # = (pixels / 255 - {mean}) / {std}, shape [N, 1, 28, 28]"
        )
    return "\n".join([*lines, f"# net(x) returns {returns}"])


def _run(name: Optional[str]) -> str:
    """The run whose ``last``/``best`` is meant: ``name``, or the one run in ``checkpoints/``."""
    if name is not None:
        return name
    runs = sorted(p.name for p in Path("checkpoints").iterdir() if p.is_dir()) if Path("checkpoints").is_dir() else []
    if len(runs) != 1:
        found = f"the runs in checkpoints/ are {', '.join(runs)}" if runs else "checkpoints/ holds no run"
        raise UserError(f"--ckpt_path last/best: say which run with --run_name ({found})")
    return runs[0]


def _export(args: argparse.Namespace) -> int:
    if args.ckpt_path in ("last", "best"):  # as fit, test and predict take them
        args.ckpt_path = str(checkpoint_alias(args.ckpt_path, _run(args.run_name)))
    checkpoint = load_checkpoint(args.ckpt_path)  # read once: for the lesson and for the dataset it learned
    lesson = LESSONS.get(args.lesson, Lesson).from_checkpoint(checkpoint, args.ckpt_path, map_location="cpu")
    try:
        output = save_plain_weights(lesson.net, args.output, overwrite=args.overwrite)
    except OutputExistsError as error:
        raise OutputExistsError(error.path, replace_with="--overwrite") from None
    parameters = sum(p.numel() for p in lesson.net.parameters())
    net_name = type(lesson.net).__name__
    print(f"wrote {output}: the state_dict of {net_name} ({parameters:,} parameters) from {args.ckpt_path}")
    print("to load it into the plain network:")
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = data.get("dataset") if isinstance(data, dict) else None
    print(loading_hint(lesson, output, dataset if dataset in DATASETS else None))
    return 0


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons export") -> int:
    """``gpu-lessons export``: a checkpoint's plain weights; its exit code (:mod:`gpu_lessons.errors`)."""
    description = "Write a lesson checkpoint's network as plain weights (its bare state_dict), for torch alone."
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument(
        "--ckpt_path", required=True,
        help="the checkpoint, e.g. checkpoints/cnn/version_0/last.ckpt, or last/best of the newest run of --run_name",
    )
    parser.add_argument("--run_name", help="with --ckpt_path last or best: the run (e.g. cnn); default: the only one")
    parser.add_argument("--output", required=True, help="the weights file to write: NAME.pth, or NAME.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (else it is kept)")
    parser.add_argument(
        "--lesson", choices=LESSONS, help="the lesson class, for a checkpoint saved from Python (which records none)"
    )
    return run_command(lambda: _export(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
