"""How much faster the MNIST lessons train than the course's own loop, measured side by side on one device.

    python benchmarks/mnist_speed.py --data_dir DIR [--device cuda] [--lessons mlp cnn]

For each lesson it runs, in this order and on the same device:

* ``course loop``: the course's plain PyTorch loop (torchvision ``ToTensor`` + ``DataLoader``, batch 32,
  Adam 1e-3, 5 epochs), re-implemented here as the baseline every learner already has;
* ``plain loop, package data``: a hand-written loop over the package's device-resident batches with the shipped
  config's model, optimizer and schedule, validating every epoch like Lightning does: the floor for Lightning;
* ``bare Trainer``: a ``Trainer`` with nothing of the package's (no logger, progress bar, checkpoints, metrics or
  callbacks) around the same network, optimizer, schedule and batches, validating every epoch: the floor that
  Lightning's own loop sets;
* ``gpu_lessons fit``: ``Trainer.fit`` with the shipped config (pictures off: they are drawn after training), then
  its test accuracy. This and the plain loop each run in a fresh process, timed from the start of training (data
  setup included) to the last validation, with the CUDA context already created;
* ``gpu_lessons fit`` command: the wall time of ``python -m gpu_lessons fit --config configs/<lesson>.yaml``,
  interpreter start, imports, data loading and checkpointing included.

The plain loop, the bare Trainer, ``fit`` and the command run ``--repeats`` times (interleaved) and the median counts: on a shared
machine single timings drift by 10 % or more. It prints a Markdown table: fit seconds, whole-command seconds, test
accuracy, speed-up over the course loop, and the overhead of the bare Trainer and of ``fit`` over the plain loop on the same
data path (the median of the repeats' own ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lightning.pytorch import LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu_lessons.callbacks import NVML_CHECK_VARIABLE  # noqa: E402
from gpu_lessons.cli import LessonCLI  # noqa: E402
from gpu_lessons.course import course_mnist_loop  # noqa: E402
from gpu_lessons.models import CNN, MNISTNet  # noqa: E402

NETS = {"mlp": MNISTNet, "cnn": CNN}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def course_loop(lesson: str, data_dir: Path, device: torch.device, epochs: int = 5) -> dict[str, float]:
    """The course's steps 10/12 loop (batch 32, ToTensor, Adam 1e-3): the package's own copy of it."""
    torch.manual_seed(42)
    fit_seconds, accuracy = course_mnist_loop(NETS[lesson](), data_dir, device, epochs, print_loss=False)
    return {"fit_s": fit_seconds, "test_acc": accuracy}


def shipped_config_args(lesson: str, data_dir: Path, device: torch.device) -> list[str]:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return [
        "--config", str(REPO / "configs" / f"{lesson}.yaml"),
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.download", "false",
        "--trainer.accelerator", accelerator,
    ]


def without_lightnings_nvml_check() -> None:
    """Run on as a plain PyTorch process would: without the fork-safe GPU check ``import lightning`` switches on,
    which slows every Adam step on the CPU (a ``fit`` clears it too, with the CLI's ``cpu_cuda_check`` callback)."""
    os.environ.pop(NVML_CHECK_VARIABLE, None)


def plain_loop(lesson: str, data_dir: Path, device: torch.device) -> dict[str, float]:
    """The shipped config's model, optimizer, schedule, metrics and data path, driven by hand instead of by Lightning.

    Timed like ``Trainer.fit``: from loading the data to the last validation.
    """
    with mock.patch.object(sys, "argv", [sys.argv[0]]):  # the config comes from args, not this script's argv
        cli = LessonCLI(args=shipped_config_args(lesson, data_dir, device), run=False)
    model, datamodule = cli.model.to(device), cli.datamodule
    without_lightnings_nvml_check()
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
        step_outputs = []  # the lesson's epoch metrics, kept and computed as its training_step and epoch end do
        for batch in train_batches:
            loss, preds, targets = model.model_step(datamodule.on_after_batch_transfer(batch, 0))
            step_outputs.append((loss.detach(), preds, targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        losses, preds, targets = zip(*step_outputs)
        model.train_loss.update(torch.stack(losses))
        model.train_metric.update(torch.cat(preds), torch.cat(targets))
        for metric in (model.train_loss, model.train_metric):  # what Lightning does with the logged metric objects
            metric.compute()
            metric.reset()
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


def lightning_fit(lesson: str, data_dir: Path, device: torch.device) -> dict[str, float]:
    """``Trainer.fit`` with the shipped config; returns its fit time and test accuracy.

    Pictures are off: they are drawn after training and are not part of the loop being compared (the command column
    has them)."""
    args = [*shipped_config_args(lesson, data_dir, device), "--run_name", f"bench_{lesson}", "--pictures.enabled", "false"]
    with mock.patch.object(sys, "argv", [sys.argv[0]]):
        cli = LessonCLI(args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    accuracy = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]
    return {"fit_s": fit_seconds, "test_acc": accuracy}


class BareLesson(LightningModule):
    """The lesson's network, loss, optimizer and schedule and nothing else: no logging, metrics or callbacks."""

    def __init__(self, lesson: Any, steps: int) -> None:
        super().__init__()
        self.lesson, self.steps = lesson, steps
        self.correct = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.lesson.model_step(batch)[0]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.correct += (self.lesson(images).argmax(dim=1) == labels).sum()

    def on_validation_epoch_end(self) -> None:
        """Read the count once per validation, as the plain loop's ``evaluate`` does."""
        int(self.correct)
        self.correct = 0

    def configure_optimizers(self) -> Any:
        optimizer = self.lesson.optimizer_factory(self.parameters())
        scheduler = self.lesson.scheduler_factory(optimizer, total_steps=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def bare_trainer(lesson: str, data_dir: Path, device: torch.device) -> dict[str, float]:
    """A ``Trainer`` with nothing of the package's (no logger, progress bar, checkpoints, metrics or callbacks) around
    the same network, optimizer, schedule and batches, validating every epoch: the floor Lightning's loop sets."""
    with mock.patch.object(sys, "argv", [sys.argv[0]]):
        cli = LessonCLI(args=shipped_config_args(lesson, data_dir, device), run=False)
    datamodule, epochs = cli.datamodule, cli.trainer.max_epochs
    without_lightnings_nvml_check()
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    datamodule.setup("fit")  # to count the steps; setup is idempotent, so the fit's own call finds it done
    bare = BareLesson(cli.model, steps=epochs * len(datamodule.train_dataloader()))
    trainer.fit(bare, datamodule=datamodule)
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    model = cli.model.to(device)
    return {"fit_s": fit_seconds, "test_acc": evaluate(model, datamodule, datamodule.test_dataloader())}


MEASUREMENTS = {"plain": plain_loop, "bare": bare_trainer, "fit": lightning_fit}


def in_fresh_process(kind: str, lesson: str, data_dir: Path, device: torch.device, workdir: Path) -> dict[str, float]:
    """Runs ``plain_loop`` or ``lightning_fit`` in a new interpreter, so both start equally cold."""
    args = [__file__, "--measure", kind, "--lessons", lesson, "--data_dir", str(data_dir), "--device", str(device)]
    output = run_python(args, workdir)
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of the plain loop and of fit; the median counts")
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)  # in_fresh_process's child
    args = parser.parse_args()
    device = torch.device(args.device)
    data_dir = args.data_dir.resolve()
    if args.measure:
        if device.type == "cuda":  # creating the CUDA context is the command's cost, not the training loop's
            torch.zeros(1, device=device)
            synchronize(device)
        print("RESULT " + json.dumps(MEASUREMENTS[args.measure](args.lessons[0], data_dir, device)), flush=True)
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)

    rows = []
    for lesson in args.lessons:
        course = None if args.skip_course else course_loop(lesson, data_dir, device)
        # Interleaved, so a machine that gets busier or cooler partway through slows both sides alike.
        plains, bares, fits, commands = [], [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as workdir:  # each repeat writes its run's folders afresh
                plains.append(in_fresh_process("plain", lesson, data_dir, device, Path(workdir)))
                bares.append(in_fresh_process("bare", lesson, data_dir, device, Path(workdir)))
                fits.append(in_fresh_process("fit", lesson, data_dir, device, Path(workdir)))
                commands.append(fit_command(lesson, data_dir, device, Path(workdir)))
        plain, bare, fitted = median_run(plains), median_run(bares), median_run(fits)
        command_s = statistics.median(commands)
        if course:
            rows.append((lesson, "course loop (batch 32, DataLoader)", course, None, 1.0, None))
        rows.append((lesson, "plain loop, package data path", plain, None, course and course["fit_s"] / plain["fit_s"], None))
        rows.append((lesson, "bare Trainer, same batches", bare, None, course and course["fit_s"] / bare["fit_s"],
                     paired_overhead(bares, plains)))
        overhead = paired_overhead(fits, plains)
        speedup = course and course["fit_s"] / fitted["fit_s"]
        rows.append((lesson, "gpu_lessons fit (Lightning)", fitted, command_s, speedup, overhead))
        print(f"{lesson}: fit {[round(f['fit_s'], 2) for f in fits]} s, bare Trainer {[round(b['fit_s'], 2) for b in bares]} s, "
              f"plain {[round(p['fit_s'], 2) for p in plains]} s; fit over the plain loop: {overhead:+.1%}", flush=True)

    repeats = f", median of {args.repeats} runs" if args.repeats > 1 else ""
    print(f"\n{name}{repeats}\n")
    print("| lesson | run | fit s | command s | test acc | speed-up vs course | overhead vs plain loop |")
    print("|---|---|---|---|---|---|---|")
    for lesson, label, result, command_s, speedup, overhead in rows:
        command = f"{command_s:.1f}" if command_s is not None else ""
        speed = f"{speedup:.1f}x" if speedup else ""
        extra = f"{overhead:+.0%}" if overhead is not None else ""
        print(f"| {lesson} | {label} | {result['fit_s']:.2f} | {command} | {result['test_acc']:.2%} | {speed} | {extra} |")


def paired_overhead(runs: list[dict[str, float]], baselines: list[dict[str, float]]) -> float:
    """The median of the repeats' own ratios minus 1: the two runs of one repeat ran back to back, so the machine's
    drift between repeats (10-30 % on shared cores) cancels out."""
    return statistics.median(run["fit_s"] / baseline["fit_s"] for run, baseline in zip(runs, baselines)) - 1


def median_run(results: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median fit time, the slower middle one for an even count (every repeat trains the same seeded
    run, so their accuracies agree)."""
    return sorted(results, key=lambda r: r["fit_s"])[len(results) // 2]


if __name__ == "__main__":
    main()
