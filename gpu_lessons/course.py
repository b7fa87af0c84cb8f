"""The course's own training loop beside each lesson: ``gpu-lessons course <lesson> [--compare]``.

The course trains its small networks with a plain PyTorch loop (its step 7): forward pass, loss, zero_grad,
backward, step. :func:`course_loop` is that loop as the course writes it. ``gpu-lessons course regression`` runs it on
the lesson's data with the lesson's shipped settings (the network's starting weights, the optimizer and learning rate,
the scheduler, the number of steps) and prints the loss as the course does. ``--compare`` then trains the Lightning
lesson from the same starting point and shows that both end with the same weights: bit-identical on the CPU for every
full-batch lesson, because Lightning runs the same five lines (it does zero_grad, backward and step for the loss the
lesson's ``training_step`` returns).

The MNIST lessons' loop (:func:`course_mnist_loop`) has other settings: ``--compare`` puts the accuracies side by side.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from gpu_lessons.course_loop import course_loop
from gpu_lessons.errors import CommandParser, UserError, positive_int, run_command

FULL_BATCH_LESSONS = ("regression", "activations", "classifier", "overfit", "dropout", "step_lr", "plateau")
MNIST_LESSONS = ("mlp", "cnn", "mnist_classifier")


def course_mnist_loop(
    model: nn.Module, data_dir: Union[str, Path], device: Union[str, torch.device] = "cpu", epochs: int = 5,
    print_loss: bool = True,
) -> tuple[float, float]:
    """The course's MNIST loop (steps 10 and 12): ``ToTensor``, a shuffled ``DataLoader`` of batch 32, Adam at 1e-3,
    cross-entropy. Returns the training seconds and the test accuracy; ``data_dir`` holds ``MNIST/raw``."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    to_tensor = transforms.ToTensor()
    train = datasets.MNIST(data_dir, train=True, download=False, transform=to_tensor)
    test = datasets.MNIST(data_dir, train=False, download=False, transform=to_tensor)
    train_loader = DataLoader(train, batch_size=32, shuffle=True)
    test_loader = DataLoader(test, batch_size=32, shuffle=False)
    model = model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total_loss = 0.0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        if print_loss:
            print(f"Epoch {epoch + 1}, Loss: {total_loss / len(train_loader):.4f}")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return seconds, correct / len(test)


def _built(name: str, *extra: str):  # -> LessonCLI, imported here: ``gpu-lessons course --help`` stays quick
    from gpu_lessons.cli import LessonCLI
    from gpu_lessons.lessons import config_path
    from gpu_lessons.progress import quiet_lightning

    quiet = [
        "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--pictures.enabled", "false", "--checkpoint.save_top_k", "0",
        "--last_checkpoint.save_top_k", "0", "--trainer.num_sanity_val_steps", "0",
    ]
    quiet_lightning()
    # nothing is written: no logs, checkpoints, pictures or config.yaml
    return LessonCLI(args=["--config", config_path(name), *quiet, *extra], run=False, save_config_callback=None)


def _course(args: argparse.Namespace) -> int:
    cli = _built(args.lesson)
    lesson, data, trainer = cli.model, cli.datamodule, cli.trainer
    data.setup("fit")
    X, y = data.splits["train"]
    steps = trainer.max_epochs * data.steps_per_epoch
    net, start_state = copy.deepcopy(lesson.net), torch.get_rng_state()  # the Lightning run starts from both too
    optimizer = lesson.optimizer_factory(net.parameters())
    scheduler = lesson.build_scheduler(optimizer, lambda: steps) if lesson.scheduler_factory is not None else None
    print(f"the course's loop: {args.lesson}, {steps} full-batch steps of {type(optimizer).__name__} on {len(X)} samples")
    started = time.perf_counter()
    every = max(steps // 5, 1)
    loss = course_loop(net, X, y, lesson.loss, optimizer, steps, scheduler, data.steps_per_epoch, every)
    print(f"course loop: {steps} steps in {time.perf_counter() - started:.2f} s, final loss {loss:.6g}")
    if not args.compare:
        return 0
    torch.set_rng_state(start_state)  # the same dropout masks, if the lesson draws any
    started = time.perf_counter()
    trainer.fit(lesson, datamodule=data)
    print(f"Lightning fit: {trainer.global_step} steps in {time.perf_counter() - started:.2f} s")
    ours, theirs = net.state_dict(), lesson.net.state_dict()
    if trainer.global_step == steps and all(torch.equal(ours[name], theirs[name]) for name in ours):
        count = sum(tensor.numel() for tensor in ours.values())
        print(f"weights: bit-identical ({count:,} parameters): the course's loop and the Lightning lesson are one training")
        return 0
    largest = max(float((ours[name] - theirs[name]).abs().max()) for name in ours)
    print(f"weights differ: largest difference {largest:.3g} after {trainer.global_step} Lightning steps")
    return 1


def _course_mnist(args: argparse.Namespace) -> int:
    if args.data_dir is None:
        raise UserError(f"course {args.lesson}: give --data_dir, the folder whose MNIST/raw holds the four MNIST files")
    torch.manual_seed(42)
    cli = _built(
        args.lesson, "--data.init_args.data_dir", str(args.data_dir), "--data.init_args.download", "false",
        *args.lesson_options,
    )
    net = type(cli.model.net)()  # the course's network, fresh: its own loop, its own settings
    print(f"the course's loop: {args.lesson}, {type(net).__name__}, {args.epochs} epochs of batch 32, Adam 1e-3 (CPU)")
    seconds, accuracy = course_mnist_loop(net, args.data_dir, "cpu", args.epochs)
    print(f"course loop: {seconds:.1f} s, test accuracy {accuracy:.2%}")
    if not args.compare:
        return 0
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    lesson_accuracy = float(cli.trainer.callback_metrics["test/acc"])
    print(f"Lightning lesson, shipped config ({cli.trainer.max_epochs} epochs, batch {cli.datamodule.batch_size}): "
          f"{seconds:.1f} s, test accuracy {lesson_accuracy:.2%}")
    return 0


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons course") -> int:
    """``gpu-lessons course LESSON [--compare]``: the exit code (:mod:`gpu_lessons.errors`), 1 for different weights."""
    parser = CommandParser(prog=prog, description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("lesson", choices=FULL_BATCH_LESSONS + MNIST_LESSONS, help="the lesson whose course loop to run")
    parser.add_argument("--compare", action="store_true", help="also train the Lightning lesson: the same weights (full "
                        "batch) or the test accuracies side by side (MNIST)")
    parser.add_argument("--data_dir", type=Path, help="MNIST lessons: the folder whose MNIST/raw holds the files")
    parser.add_argument("--epochs", type=positive_int, default=5, help="MNIST lessons: the course loop's epochs (5)")
    parser.epilog = "Options after -- go to the Lightning lesson (MNIST lessons), e.g. -- --trainer.max_epochs 2."
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)

    def course() -> int:
        args = parser.parse_args(argv[:split])
        args.lesson_options = argv[split + 1 :]
        return (_course_mnist if args.lesson in MNIST_LESSONS else _course)(args)

    return run_command(course)


if __name__ == "__main__":
    raise SystemExit(main())
