"""Plain weights (course step 11): a lesson checkpoint's network as a bare ``state_dict`` file.

``python -m gpu_lessons.export --ckpt_path checkpoints/cnn/last.ckpt --output cnn.pth`` writes what the course's
``torch.save(model.state_dict(), "cnn.pth")`` writes, so the network loads with torch alone:
``net.load_state_dict(torch.load("cnn.pth", weights_only=True))``, into this package's class or the course's own
(the parameter names are the course's).
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gpu_lessons import models
from gpu_lessons.checkpointing import PathLike, load_checkpoint, write_atomically
from gpu_lessons.data.mnist import DATASETS
from gpu_lessons.errors import UserError, one_line, print_error
from gpu_lessons.models import Lesson

LESSONS: dict[str, type[Lesson]] = {
    name: obj
    for name, obj in vars(models).items()
    if isinstance(obj, type) and issubclass(obj, Lesson) and obj is not Lesson
}


def load_lesson(checkpoint_path: PathLike, lesson_class: Optional[type[Lesson]] = None) -> Lesson:
    """Load a lesson from a checkpoint on the CPU (:meth:`Lesson.load_from_checkpoint`: nothing in it chooses code).

    Checkpoints written by ``python -m gpu_lessons`` record their lesson class; for one written from Python
    (``trainer.save_checkpoint``), pass ``lesson_class``. Raises :class:`CheckpointError` for anything else.
    """
    return _lesson_of(load_checkpoint(checkpoint_path), checkpoint_path, lesson_class)


def _lesson_of(checkpoint: dict, source: PathLike, lesson_class: Optional[type[Lesson]]) -> Lesson:
    return (lesson_class or Lesson).from_checkpoint(checkpoint, source, map_location="cpu")


def save_plain_weights(net: nn.Module, output_path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``net.state_dict()`` to ``output_path`` atomically: ``torch.save``, or safetensors for ``.safetensors``.

    An existing file is only replaced with ``overwrite=True``; a reader never sees a half-written one.
    """
    output = Path(output_path)
    exists = FileExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it")
    if output.exists() and not overwrite:
        raise exists  # before any work; write_atomically also refuses one that appears meanwhile
    state_dict = net.state_dict()
    if output.suffix == ".safetensors":
        try:
            from safetensors.torch import save as to_safetensors
        except ImportError:
            message = f"writing {output.name} needs the safetensors package: pip install safetensors"
            raise ImportError(message) from None
        data = to_safetensors(state_dict)
        write = lambda file: file.write(data)  # noqa: E731
    else:
        write = lambda file: torch.save(state_dict, file)  # noqa: E731
    try:
        write_atomically(output, write, overwrite=overwrite)
    except FileExistsError:
        raise exists from None
    return output


def export_plain_weights(
    checkpoint_path: PathLike,
    output_path: PathLike,
    lesson_class: Optional[type[Lesson]] = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the plain ``nn.Module``'s ``state_dict`` (``lesson.net``) of a lesson checkpoint to ``output_path``."""
    return save_plain_weights(load_lesson(checkpoint_path, lesson_class).net, output_path, overwrite=overwrite)


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
    returns = {
        "binary": "a logit per sample: probability = net(x).sigmoid()",
        "multiclass": "logits: class probabilities = net(x).softmax(dim=-1)",
        "regression": "the prediction itself",
    }[lesson.task]
    lines = [
        f"import torch; from {module} import {net_class.__name__}",
        f"net = {net_class.__name__}({arguments}).eval(); {load}",
    ]
    if dataset is not None:  # the networks saw normalised pixels in training, and need them now
        _, mean, std = DATASETS[dataset]
        lines += [
            f"from gpu_lessons.data import preprocess; x = preprocess(images_uint8, {dataset!r})"
            f"  # = (pixels / 255 - {mean}) / {std}, shape [N, 1, 28, 28]",
        ]
    return "\n".join([*lines, f"# net(x) returns {returns}"])


def _trained_on(checkpoint: dict) -> Optional[str]:
    """The image dataset (``mnist``, ``fashion_mnist``) the checkpoint's DataModule served, if it was one of them."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = data.get("dataset") if isinstance(data, dict) else None
    return dataset if dataset in DATASETS else None


def main(argv: Optional[list[str]] = None, prog: str = "python -m gpu_lessons.export") -> int:
    """Export a checkpoint's plain weights; bad input is one ``error:`` line and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="the lesson checkpoint, e.g. checkpoints/cnn/last.ckpt")
    parser.add_argument("--output", required=True, help="the weights file to write: NAME.pth, or NAME.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument(
        "--lesson", choices=sorted(LESSONS), help="the lesson class, for checkpoints not written by the CLI"
    )
    args = parser.parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.ckpt_path)  # read once: for the lesson and for the dataset it learned
        lesson = _lesson_of(checkpoint, args.ckpt_path, LESSONS.get(args.lesson))
        output = save_plain_weights(lesson.net, args.output, overwrite=args.overwrite)
    except (UserError, OSError, ImportError) as error:
        print_error(one_line(error))
        return 2
    parameters = sum(p.numel() for p in lesson.net.parameters())
    net_name = type(lesson.net).__name__
    print(f"wrote {output}: the state_dict of {net_name} ({parameters:,} parameters) from {args.ckpt_path}")
    print("to load it into the plain network:")
    print(loading_hint(lesson, output, _trained_on(checkpoint)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
