"""How much faster the MNIST lessons train than the course's own loop, measured side by side on one device.

    python benchmarks/mnist_speed.py --data_dir DIR [--device cuda] [--lessons mlp cnn]

For each lesson it runs, in this order and on the same device:

* ``course loop``: the course's plain PyTorch loop (torchvision ``ToTensor`` + ``DataLoader``, batch 32,
  Adam 1e-3, 5 epochs), re-implemented here as the baseline every learner already has;
* ``plain loop, package data``: a hand-written loop over the package's device-resident batches with the shipped
  config's model, optimizer and schedule, validating every epoch like Lightning does: the floor for Lightning;
* ``gpu_lessons fit``: ``Trainer.fit`` with the shipped config (in a fresh process, pictures off: they are drawn
  after training), then its test accuracy;
* ``gpu_lessons fit`` command: the wall time of ``python -m gpu_lessons fit --config configs/<lesson>.yaml``,
  interpreter start, imports, data loading and checkpointing included.

It prints a Markdown table: fit seconds, whole-command seconds, test accuracy, speed-up over the course loop,
and Lightning's overhead over the plain loop on the same data path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_lessons.cli import LessonCLI  # noqa: E402
from gpu_lessons.models import CNN, MNISTNet  # noqa: E402

NETS = {"mlp": MNISTNet, "cnn": CNN}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def course_loop(lesson: str, data_dir: Path, device: torch.device, epochs: int = 5) -> dict[str, float]:
    """The course's steps 10/12 loop, as written there (batch 32, ToTensor, Adam 1e-3)."""
    torch.manual_seed(42)
    to_tensor = transforms.ToTensor()
    train = datasets.MNIST(data_dir, train=True, download=False, transform=to_tensor)
    test = datasets.MNIST(data_dir, train=False, download=False, transform=to_tensor)
    train_loader = DataLoader(train, batch_size=32, shuffle=True)
    test_loader = DataLoader(test, batch_size=32, shuffle=False)
    model = NETS[lesson]().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total_loss = 0.0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()  # the course prints the mean loss per epoch
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return {"fit_s": fit_seconds, "test_acc": correct / len(test)}


def shipped_config_args(lesson: str, data_dir: Path, device: torch.device) -> list[str]:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return [
        "--config", str(REPO / "configs" / f"{lesson}.yaml"),
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.download", "false",
        "--trainer.accelerator", accelerator,
    ]


def plain_loop(lesson: str, data_dir: Path, device: torch.device) -> dict[str, float]:
    """The shipped config's model, optimizer, schedule, metrics and data path, driven by hand instead of by Lightning.

    Timed like ``Trainer.fit``: from loading the data to the last validation.
    """
    with mock.patch.object(sys, "argv", [sys.argv[0]]):  # the config comes from args, not this script's argv
        cli = LessonCLI(args=shipped_config_args(lesson, data_dir, device), run=False)
    model, datamodule = cli.model.to(device), cli.datamodule
    epochs = cli.trainer.max_epochs

    synchronize(device)
    start = time.perf_counter()
    datamodule.setup("fit")
    datamodule.splits = {name: tuple(t.to(device) for t in split) for name, split in datamodule.splits.items()}
    train_batches = datamodule.train_dataloader()
    optimizer = model.optimizer_factory(model.parameters())
    scheduler = model.scheduler_factory(optimizer, total_steps=epochs * len(train_batches))
    for epoch in range(epochs):
        model.train()
        train_batches.sampler.set_epoch(epoch)
        for batch in train_batches:
            loss, preds, targets = model.model_step(datamodule.on_after_batch_transfer(batch, 0))
            model.train_loss.update(loss.detach())  # the lesson's epoch metrics, as its training_step keeps them
            model.train_metric.update(preds, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        evaluate(model, datamodule, datamodule.val_dataloader())
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    return {"fit_s": fit_seconds, "test_acc": evaluate(model, datamodule, datamodule.test_dataloader())}


def evaluate(model: Any, datamodule: Any, batches: Any) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=next(model.parameters()).device)
    count = 0
    with torch.no_grad():
        for batch in batches:
            images, labels = datamodule.on_after_batch_transfer(batch, 0)
            correct += (model(images).argmax(dim=1) == labels).sum()
            count += len(labels)
    return correct.item() / count


def lightning_fit(lesson: str, data_dir: Path, device: torch.device, workdir: Path) -> dict[str, float]:
    """``Trainer.fit`` with the shipped config in a fresh process; returns its fit time and test accuracy."""
    script = (
        "import json, sys, time\n"
        "from gpu_lessons.cli import LessonCLI\n"
        "cli = LessonCLI(args=sys.argv[1:], run=False)\n"
        "start = time.perf_counter()\n"
        "cli.trainer.fit(cli.model, datamodule=cli.datamodule)\n"
        "fit_s = time.perf_counter() - start\n"
        "acc = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]['test/acc']\n"
        "print('RESULT ' + json.dumps({'fit_s': fit_s, 'test_acc': acc}))\n"
    )
    # Pictures are drawn after training and are not part of the loop being compared; the command column has them.
    args = [*shipped_config_args(lesson, data_dir, device), "--run_name", f"bench_{lesson}", "--pictures.enabled", "false"]
    output = run_python(["-c", script, *args], workdir)
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def fit_command(lesson: str, data_dir: Path, device: torch.device, workdir: Path) -> float:
    """Wall seconds of ``python -m gpu_lessons fit --config configs/<lesson>.yaml``."""
    start = time.perf_counter()
    run_python(["-m", "gpu_lessons", "fit", *shipped_config_args(lesson, data_dir, device)], workdir)
    return time.perf_counter() - start


def run_python(args: list[str], workdir: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"benchmark step failed: python {' '.join(args[:3])} ...")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="folder that holds MNIST/raw")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lessons", nargs="+", default=["mlp", "cnn"], choices=sorted(NETS))
    parser.add_argument("--skip_course", action="store_true", help="leave out the (slow) course loop")
    args = parser.parse_args()
    device = torch.device(args.device)
    data_dir = args.data_dir.resolve()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for lesson in args.lessons:
            course = None if args.skip_course else course_loop(lesson, data_dir, device)
            plain = plain_loop(lesson, data_dir, device)
            fitted = lightning_fit(lesson, data_dir, device, Path(workdir))
            command_s = fit_command(lesson, data_dir, device, Path(workdir))
            if course:
                rows.append((lesson, "course loop (batch 32, DataLoader)", course["fit_s"], None, course["test_acc"], 1.0))
            rows.append((lesson, "plain loop, package data path", plain["fit_s"], None, plain["test_acc"], course and course["fit_s"] / plain["fit_s"]))
            rows.append((lesson, "gpu_lessons fit (Lightning)", fitted["fit_s"], command_s, fitted["test_acc"], course and course["fit_s"] / fitted["fit_s"]))
            overhead = fitted["fit_s"] / plain["fit_s"] - 1
            print(f"{lesson}: Lightning overhead over the plain loop on the same data path: {overhead:+.1%}", flush=True)

    print(f"\n{name}\n")
    print("| lesson | run | fit s | command s | test acc | speed-up vs course |")
    print("|---|---|---|---|---|---|")
    for lesson, label, fit_s, command_s, acc, speedup in rows:
        command = f"{command_s:.1f}" if command_s is not None else ""
        speed = f"{speedup:.1f}x" if speedup else ""
        print(f"| {lesson} | {label} | {fit_s:.2f} | {command} | {acc:.2%} | {speed} |")


if __name__ == "__main__":
    main()
