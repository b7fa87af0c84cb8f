"""The synthetic lessons against the course's own plain-PyTorch scripts, side by side on one device.

    python benchmarks/lesson_speed.py [--device cuda] [--repeats 3] [--lessons regression classifier ...]

For every synthetic lesson it runs, in fresh processes and interleaved ``--repeats`` times:

* ``course script``: the course's equivalent script with torch alone (the same network, optimizer, learning rate
  and number of full-batch steps; the loop is the package's :func:`gpu_lessons.course_loop.course_loop`, which imports
  torch alone, printing the loss every 100 steps as the course does):
  timed as a whole command (``python -c ...``: interpreter start and ``import torch`` included) and its training
  loop alone;
* ``gpu_lessons fit``: ``python -m gpu_lessons fit --config <lesson>`` with the shipped config, as a whole command
  (imports, checkpoints, logs and pictures included) with its output going to a pipe, not a terminal, and its size
  recorded; and its training time alone, from Lightning's own ``Timer`` callback around ``Trainer.fit``'s training
  (validation every epoch and checkpoints included; pictures, drawn after training, are in the command's time), in
  a run of the same config in a fresh process;
* ``bare Trainer``: the same network, loss, optimizer and batches in a ``Trainer`` with nothing else (no logger,
  progress bar, checkpoints, validation or callbacks): the floor Lightning's own training loop sets.

It prints a Markdown table of the medians: both whole commands, both training times, their ratios (each the median
of the repeats' own ratios), the fit's training time over the bare Trainer's (what the package adds to Lightning's
loop), and the bytes the command wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The course's scripts: data, network and loss as the course writes them; STEPS full-batch optimizer steps.
COMMON = """
import json, sys, time
import torch
from torch import nn
device = torch.device(sys.argv[1])
torch.manual_seed(42)
"""

TRAIN = """
from gpu_lessons.course_loop import course_loop  # the package's copy of the course's loop: torch alone
model = Net().to(device)
x, y = x.to(device), y.to(device)
optimizer = OPTIMIZER
scheduler = SCHEDULER
start = time.perf_counter()
final_loss = course_loop(model, x, y, loss_fn, optimizer, STEPS, scheduler, print_every=100)
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(json.dumps({"train_s": seconds, "final_loss": final_loss}))
"""

SIMPLE_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(1, 8)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(8, 1)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(x)))
"""

OVERFIT_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Dropout(DROPOUT), nn.Linear(128, 128), nn.ReLU(),
                                 nn.Dropout(DROPOUT), nn.Linear(128, 1))

    def forward(self, x):
        return self.net(x)
"""

SCHEDULER_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)
x = torch.randn(100, 4)
y = (x.sum(dim=1, keepdim=True) > 0).float()
loss_fn = nn.BCEWithLogitsLoss()
"""

COURSE_SCRIPTS = {
    "regression": (SIMPLE_NET + """
x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
y = 2 * x + 1
loss_fn = nn.MSELoss()
""", "torch.optim.Adam(model.parameters(), lr=0.01)", "None", 2000),
    "activations": (SIMPLE_NET + """
x = torch.linspace(-2, 2, 41).unsqueeze(1)
y = x ** 2
loss_fn = nn.MSELoss()
""", "torch.optim.Adam(model.parameters(), lr=0.01)", "None", 2000),
    "classifier": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(2, 16)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(x)))
x = torch.cat([torch.randn(50, 2) + 2, torch.randn(50, 2) + 6])
y = torch.cat([torch.zeros(50, 1), torch.ones(50, 1)])
loss_fn = nn.BCEWithLogitsLoss()
""", "torch.optim.Adam(model.parameters(), lr=0.01)", "None", 1000),
    "overfit": (OVERFIT_NET.replace("DROPOUT", "0.0") + """
x = torch.randn(20, 10)
y = torch.randint(0, 2, (20, 1)).float()
loss_fn = nn.BCEWithLogitsLoss()
""", "torch.optim.Adam(model.parameters(), lr=0.001)", "None", 300),
    "dropout": (OVERFIT_NET.replace("DROPOUT", "0.5") + """
x = torch.randn(200, 10)
y = (x.sum(dim=1, keepdim=True) > 0).float()
loss_fn = nn.BCEWithLogitsLoss()
""", "torch.optim.Adam(model.parameters(), lr=0.001)", "None", 300),
    "step_lr": (SCHEDULER_NET, "torch.optim.Adam(model.parameters(), lr=0.1)",
                "torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)", 6),
    "plateau": (SCHEDULER_NET, "torch.optim.Adam(model.parameters(), lr=0.1)",
                "torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=2, factor=0.5)", 20),
}


def course_script(lesson: str) -> str:
    setup, optimizer, scheduler, steps = COURSE_SCRIPTS[lesson]
    train = TRAIN.replace("OPTIMIZER", optimizer).replace("SCHEDULER", scheduler).replace("STEPS", str(steps))
    return textwrap.dedent(COMMON) + setup + train


# Run in a fresh process: the shipped config's Trainer.fit, and a bare Trainer (no logger, progress bar, checkpoints,
# validation or callbacks of ours) around a module that only runs the same network's loss on the same batches: the
# floor that Lightning's own loop sets. Both are timed from on_train_start to on_train_end.
FIT_ONCE = """
import json, os, sys, time
sys.argv = sys.argv[:1]
import lightning as L
from gpu_lessons.callbacks import NVML_CHECK_VARIABLE
from gpu_lessons.cli import LessonCLI
from gpu_lessons.progress import quiet_lightning

class FitTimer(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()
    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start

class Bare(L.LightningModule):
    def __init__(self, lesson):
        super().__init__()
        self.lesson = lesson
    def training_step(self, batch, batch_idx):
        return self.lesson.model_step(batch)[0]
    def configure_optimizers(self):
        return self.lesson.optimizer_factory(self.parameters())

quiet_lightning()
args = ["--config", {lesson!r}, "--trainer.accelerator", {accelerator!r}, "--trainer.enable_progress_bar", "false",
        "--pictures.enabled", "false"]
cli = LessonCLI(args=args, run=False)
timer = FitTimer()
cli.trainer.callbacks.append(timer)
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
fresh = LessonCLI(args=args, run=False)
# Lightning's loop alone: without the fork-safe GPU check `import lightning` switches on, which slows every Adam step
# on the CPU and which the fit above has cleared too (its cpu_cuda_check callback).
os.environ.pop(NVML_CHECK_VARIABLE, None)
bare_timer = FitTimer()
bare = L.Trainer(accelerator={accelerator!r}, devices=1, max_epochs=cli.trainer.max_epochs, logger=False,
                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                 callbacks=[bare_timer])
bare.fit(Bare(fresh.model), datamodule=fresh.datamodule)
print(json.dumps({{"train_s": timer.seconds, "steps": cli.trainer.global_step, "bare_s": bare_timer.seconds}}))
"""


def timed(args: list[str], workdir: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{result.stderr[-3000:]}")
    return seconds, result


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def measure(lesson: str, device: str, workdir: Path) -> dict[str, float]:
    accelerator = "gpu" if device == "cuda" else "cpu"
    workdir.mkdir(parents=True)
    course_s, course = timed([sys.executable, "-c", course_script(lesson), device], workdir)
    command_s, command = timed(
        [sys.executable, "-m", "gpu_lessons", "fit", "--config", lesson, "--trainer.accelerator", accelerator], workdir
    )
    _, fit = timed([sys.executable, "-c", FIT_ONCE.format(lesson=lesson, accelerator=accelerator)], workdir)
    return {
        "course_command_s": course_s,
        "course_train_s": last_json(course.stdout)["train_s"],
        "command_s": command_s,
        "output_bytes": len(command.stdout.encode()) + len(command.stderr.encode()),
        "train_s": last_json(fit.stdout)["train_s"],
        "bare_s": last_json(fit.stdout)["bare_s"],
        "steps": last_json(fit.stdout)["steps"],
    }


# The table's ratios: (numerator, denominator) of each repeat's measurements.
RATIOS = {
    "command": ("command_s", "course_command_s"),
    "training": ("train_s", "course_train_s"),
    "fit_over_bare": ("train_s", "bare_s"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lessons", nargs="+", default=list(COURSE_SCRIPTS), choices=list(COURSE_SCRIPTS))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {lesson: [] for lesson in args.lessons}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for lesson in args.lessons:
                runs[lesson].append(measure(lesson, args.device, Path(workdir) / f"{lesson}-{repeat}"))
                print(f"# {lesson} run {repeat + 1}: {runs[lesson][-1]}", file=sys.stderr, flush=True)
    print(f"{args.device}, median of {args.repeats}:\n")
    print("| lesson | steps | course script s | gpu_lessons fit s | ratio | course loop s | bare Trainer s | fit training s "
          "| ratio | fit / bare | fit output |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lesson, results in runs.items():
        m = {key: statistics.median(r[key] for r in results) for key in results[0]}
        # Each ratio is the median of the repeats' own ratios: the two sides of one repeat ran back to back, so the
        # machine's drift between repeats cancels out.
        ratio = {
            name: statistics.median(r[top] / r[bottom] for r in results)
            for name, (top, bottom) in RATIOS.items()
        }
        print(
            f"| {lesson} | {int(m['steps'])} | {m['course_command_s']:.1f} | {m['command_s']:.1f} "
            f"| {ratio['command']:.2f}x | {m['course_train_s']:.2f} | {m['bare_s']:.2f} | {m['train_s']:.2f} "
            f"| {ratio['training']:.2f}x | {ratio['fit_over_bare']:.2f}x | {m['output_bytes'] / 1000:.1f} kB |"
        )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
