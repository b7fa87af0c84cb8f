"""The course's own training loop beside each lesson: ``gpu-lessons course <lesson> [--compare]``.

The course trains its small networks with a plain PyTorch loop (its step 7): forward pass, loss, zero_grad,
backward, step. :func:`course_loop` is that loop as the course writes it. ``gpu-lessons course regression`` runs it on
the lesson's data with the lesson's shipped settings (the network's starting weights, the optimizer and learning rate,
the scheduler, the number of steps) and prints the loss as the course does. ``--compare`` then trains the Lightning
lesson from the same starting point and shows that both end with the same weights: bit-identical on the CPU for every
full-batch lesson, because Lightning runs the same five lines (it does zero_grad, backward and step for the loss the
lesson's ``training_step`` returns).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from gpu_lessons.errors import CommandParser, run_command

# The lessons the course trains full-batch with its plain loop (the MNIST ones use a DataLoader: benchmarks/).
FULL_BATCH_LESSONS = ("regression", "activations", "classifier", "overfit", "dropout", "step_lr", "plateau")
LossFn = Callable[[Tensor, Tensor], Tensor]


def course_loop(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    steps: int,
    scheduler: Optional[object] = None,
    steps_per_epoch: int = 1,
    print_every: int = 0,
) -> float:
    """The course's training loop: ``steps`` full-batch steps on ``X``, ``y``; the last loss.

    A scheduler steps once per epoch of ``steps_per_epoch`` steps (the course's epochs are single steps), on the
    loss for ``ReduceLROnPlateau``. ``print_every`` prints the loss (and learning rate) every that many steps.
    """
    model.train()
    for step in range(steps):
        prediction = model(X)  # 1. forward pass: make a prediction
        loss = loss_fn(prediction, y)  # 2. calculate the loss: how wrong are we?
        optimizer.zero_grad()  # 3. zero the gradients of the previous step
        loss.backward()  # 4. backward pass: figure out blame
        optimizer.step()  # 5. update the weights
        if scheduler is not None and (step + 1) % steps_per_epoch == 0:
            scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        if print_every and step % print_every == 0:
            print(f"Epoch {step:4d} | Loss: {loss.item():.4f} | LR: {optimizer.param_groups[0]['lr']:.6f}")
    return loss.item()


def lesson_loss(lesson: nn.Module) -> LossFn:
    """The lesson's loss as a plain ``loss_fn(prediction, y)``: its criterion, on logits squeezed to one per sample for
    a binary lesson (the course's sigmoid and BCELoss, in their numerically stable form, BCEWithLogitsLoss)."""
    from gpu_lessons.models.tasks import BinaryTask

    if isinstance(lesson, BinaryTask):
        return lambda prediction, y: lesson.criterion(prediction.squeeze(-1), y.to(prediction.dtype))
    return lesson.criterion


def _built(name: str):  # -> LessonCLI, imported here: ``gpu-lessons course --help`` stays quick
    from gpu_lessons.cli import LessonCLI
    from gpu_lessons.lessons import config_path
    from gpu_lessons.progress import quiet_lightning

    quiet = [
        "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--pictures.enabled", "false", "--checkpoint.save_top_k", "0",
        "--last_checkpoint.save_top_k", "0", "--trainer.num_sanity_val_steps", "0",
    ]
    quiet_lightning()
    # nothing to keep: no logs, checkpoints, pictures or config.yaml (Lightning would write it into this folder)
    return LessonCLI(args=["--config", config_path(name), *quiet], run=False, save_config_callback=None)


def _course(args: argparse.Namespace) -> int:
    cli = _built(args.lesson)
    lesson, data, trainer = cli.model, cli.datamodule, cli.trainer
    data.setup("fit")
    X, y = data.splits["train"]
    steps = trainer.max_epochs * data.steps_per_epoch
    net, start_state = copy.deepcopy(lesson.net), torch.get_rng_state()  # the Lightning run starts from both too
    optimizer = lesson.optimizer_factory(net.parameters())
    scheduler = lesson.scheduler_factory(optimizer) if lesson.scheduler_factory is not None else None
    print(f"the course's loop: {args.lesson}, {steps} full-batch steps of {type(optimizer).__name__} on {len(X)} samples")
    started = time.perf_counter()
    every = max(steps // 5, 1)
    loss = course_loop(net, X, y, lesson_loss(lesson), optimizer, steps, scheduler, data.steps_per_epoch, every)
    print(f"course loop: {steps} steps in {time.perf_counter() - started:.2f} s, final loss {loss:.6g}")
    if not args.compare:
        return 0
    torch.set_rng_state(start_state)  # the same dropout masks, if the lesson draws any
    started = time.perf_counter()
    trainer.fit(lesson, datamodule=data)
    print(f"Lightning fit: {trainer.global_step} steps in {time.perf_counter() - started:.2f} s")
    ours, theirs = net.state_dict(), lesson.net.state_dict()
    differences = [float((ours[name] - theirs[name]).abs().max()) for name in ours]
    count = sum(tensor.numel() for tensor in ours.values())
    if trainer.global_step == steps and all(torch.equal(ours[name], theirs[name]) for name in ours):
        print(f"weights: bit-identical ({count:,} parameters): the course's loop and the Lightning lesson are one training")
        return 0
    print(f"weights differ: largest difference {max(differences):.3g} after {trainer.global_step} Lightning steps")
    return 1


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons course") -> int:
    """``gpu-lessons course LESSON [--compare]``: its exit code (:mod:`gpu_lessons.errors`); 1 if ``--compare``
    finds different weights."""
    parser = CommandParser(prog=prog, description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("lesson", choices=FULL_BATCH_LESSONS, help="the lesson whose course loop to run")
    parser.add_argument("--compare", action="store_true", help="also train the Lightning lesson and compare the weights")
    return run_command(lambda: _course(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
